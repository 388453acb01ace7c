"""Tiny randomly initialised networks of the real classes (nothing is downloaded) and small image folders.

One torch thread: the machine's two cores are shared, and oversubscribing them makes Inception-v3 forwards crawl.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modm.quality import InceptionConfig, InceptionFeatureExtractor

TINY_CLIP_IMAGE_SIZE = 32


@pytest.fixture(scope="session")
def open_clip_dir(tmp_path_factory) -> Path:
    """A tiny random open_clip CLIP in open_clip's local-dir format (the zoo's own factory)."""
    from modm.models.tiny_zoo import save_tiny_open_clip

    return save_tiny_open_clip(tmp_path_factory.mktemp("open_clip"))


@pytest.fixture(scope="session")
def pick_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """(model dir, processor dir): a tiny random transformers CLIPModel and a CLIPProcessor, save_pretrained."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from modm.models.tokenizer import build_clip_tokenizer

    root = tmp_path_factory.mktemp("pick")
    text = dict(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=49408,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        image_size=TINY_CLIP_IMAGE_SIZE,
        patch_size=8,
    )
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(root / "model")
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": TINY_CLIP_IMAGE_SIZE},
        crop_size={"height": TINY_CLIP_IMAGE_SIZE, "width": TINY_CLIP_IMAGE_SIZE},
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=build_clip_tokenizer(root / "bpe"))
    processor.save_pretrained(root / "processor")
    return root / "model", root / "processor"


@pytest.fixture(scope="session")
def inception_cfg() -> InceptionConfig:
    """Random Inception-v3 with 64-d features (the first pool), so sqrtm stays cheap in tests."""
    return InceptionConfig(weights="random", seed=0, dims=64, device="cpu", batch_size=8)


@pytest.fixture(scope="session")
def inception(inception_cfg) -> InceptionFeatureExtractor:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return InceptionFeatureExtractor.from_config(inception_cfg)
    finally:
        torch.set_num_threads(previous)


def noise_image(seed: int, size: tuple[int, int] = (48, 48), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (size[1], size[0], channels) if channels else (size[1], size[0])
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)


def write_folder(folder: Path, prompts: list[str], *, seed: int = 0, sizes=None) -> Path:
    """PNGs with sidecar prompt files; image i is noise from seed + i (sizes vary when given)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, prompt in enumerate(prompts):
        size = sizes[i % len(sizes)] if sizes else (48, 48)
        noise_image(seed + i, size).save(folder / f"img_{i:03d}.png")
        (folder / f"img_{i:03d}.txt").write_text(prompt, encoding="utf-8")
    return folder
