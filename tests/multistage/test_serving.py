"""A MultiStageUNet packaged as a StableDiffusionPipeline loads through the serving system's ordinary path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoPipelineForImage2Image, DiffusionPipeline, StableDiffusionPipeline
from PIL import Image

from modm.config.schema import ModelSpec
from modm.models.loading import load_pipeline
from modm.multistage.serving import (
    build_multistage_sd_pipeline,
    save_multistage_sd_pipeline,
    tiny_text_conditioned_unet,
)
from modm.multistage.text_digits import train_text_conditioned_digits
from modm.multistage.training import TrainConfig
from modm.multistage.unet import MultiStageUNet

SIZE, STEPS = 64, 6


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("multistage_sd")
    save_multistage_sd_pipeline(out, tiny_text_conditioned_unet((333.0, 666.0)))
    return out


@pytest.fixture(scope="module")
def pipe(pipeline_dir):
    loaded = DiffusionPipeline.from_pretrained(pipeline_dir)
    loaded.set_progress_bar_config(disable=True)
    return loaded


def txt2img(pipe, seed: int, prompt: str = "a red circle") -> np.ndarray:
    return pipe(
        prompt=prompt,
        height=SIZE,
        width=SIZE,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).images


def test_model_index_names_the_multistage_unet(pipeline_dir):
    index = json.loads((pipeline_dir / "model_index.json").read_text())
    assert index["unet"] == ["modm.multistage.unet", "MultiStageUNet"]
    assert index["_class_name"] == "StableDiffusionPipeline"


def test_from_pretrained_gives_back_a_multistage_unet_that_generates_by_seed(pipe):
    assert isinstance(pipe, StableDiffusionPipeline) and isinstance(pipe.unet, MultiStageUNet)
    assert pipe.unet.config.stage_boundaries == [333.0, 666.0]
    used = set()
    for k, decoder in enumerate(pipe.unet.decoders):
        decoder.register_forward_hook(lambda module, args, out, k=k: used.add(k))
    first, again, other = txt2img(pipe, 0), txt2img(pipe, 0), txt2img(pipe, 1)
    assert first.shape == (1, SIZE, SIZE, 3) and np.isfinite(first).all()
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert used == {0, 1, 2}


def test_img2img_from_pipe_is_deterministic(pipe):
    img2img = AutoPipelineForImage2Image.from_pipe(pipe)
    assert img2img.unet is pipe.unet
    init = Image.fromarray((txt2img(pipe, 3)[0] * 255).astype(np.uint8))
    run = lambda seed: (
        img2img(
            prompt="a blue square",
            image=init,
            strength=0.6,
            num_inference_steps=STEPS,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
        ).images
    )
    first, again, other = run(5), run(5), run(6)
    assert first.shape == (1, SIZE, SIZE, 3)
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_loads_through_the_model_spec(pipeline_dir):
    spec = ModelSpec(source=str(pipeline_dir), device="cpu", num_inference_steps=STEPS, default_size=SIZE)
    loaded = load_pipeline(spec)
    assert isinstance(loaded.unet, MultiStageUNet)


def test_mismatched_components_are_rejected():
    with pytest.raises(ValueError, match="cross_attention_dim"):
        build_multistage_sd_pipeline(tiny_text_conditioned_unet(cross_attention_dim=16))


def test_a_trained_text_conditioned_unet_is_served(tmp_path):
    unet = tiny_text_conditioned_unet((333.0, 666.0), seed=1, sample_size=4)  # trained on 32 px digits: cheap
    trained, before, after = train_text_conditioned_digits(
        unet, 24, limit=96, train_config=TrainConfig(batch_size=16, seed=0)
    )
    assert all(a < b for a, b in zip(after, before)), (before, after)
    trained.save_pretrained(tmp_path)
    served = load_pipeline(ModelSpec(source=str(tmp_path), device="cpu"))
    assert isinstance(served.unet, MultiStageUNet)
    assert served.vae.config.scaling_factor == pytest.approx(trained.vae.config.scaling_factor)
    for name, tensor in trained.unet.state_dict().items():
        assert torch.equal(served.unet.state_dict()[name], tensor), name
    images = txt2img(served, 0, prompt="a handwritten digit 7")
    assert np.array_equal(images, txt2img(served, 0, prompt="a handwritten digit 7"))


def test_the_ordinary_loader_finds_the_class_in_a_fresh_process(pipeline_dir):
    # A Serve replica has not imported modm.multistage; load_pipeline must import it from model_index.json.
    import subprocess
    import sys

    code = (
        "import sys; from modm.config import ModelSpec; from modm.models.loading import load_pipeline; "
        "assert 'modm.multistage' not in sys.modules; "
        f"pipe = load_pipeline(ModelSpec(source={str(pipeline_dir)!r}, device='cpu')); "
        "print(type(pipe.unet).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("MultiStageUNet")
