import json

import numpy as np
import pytest
import torch
from PIL import Image

from modm.config import EmbedderConfig, ModelSpec
from modm.embedding import build_embedder
from modm.generation import DiffusionGenerator, GenerationRequest, InvalidRequestError
from modm.models import ModelLoadError, load_pipeline
from modm.models.tokenizer import build_clip_tokenizer


@pytest.fixture(scope="module")
def large(tiny_zoo):
    return DiffusionGenerator.from_spec(
        ModelSpec(source=str(tiny_zoo.large), device="cpu", default_size=64, max_size=256), "large"
    )


@pytest.fixture(scope="module")
def small(tiny_zoo):
    return DiffusionGenerator.from_spec(
        ModelSpec(source=str(tiny_zoo.small), device="cpu", default_size=64, max_size=256), "small"
    )


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


REQ = GenerationRequest(prompt="a cute cat on a sofa", width=64, height=64, steps=3, seed=7)


def test_zoo_classes_are_the_real_ones(large, small):
    from diffusers import (
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    assert isinstance(large.pipe, StableDiffusion3Pipeline)
    assert isinstance(large.pipe.transformer, SD3Transformer2DModel)
    assert type(large.pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert isinstance(small.pipe, StableDiffusionXLPipeline)
    assert isinstance(small.pipe.unet, UNet2DConditionModel)
    assert small.pipe.unet.config.addition_embed_type == "text_time"
    assert small.pipe.vae_scale_factor == 8 and large.pipe.vae_scale_factor == 8


def test_zoo_is_deterministic(tiny_zoo, tmp_path):
    from modm.models import build_tiny_zoo

    again = build_tiny_zoo(tmp_path / "again")
    for part in ("large/transformer", "small/unet", "small/vae"):
        a = (tiny_zoo.root / part / "diffusion_pytorch_model.safetensors").read_bytes()
        b = (again.root / part / "diffusion_pytorch_model.safetensors").read_bytes()
        assert a == b, part
    assert json.loads(again.manifest.read_text())["seed"] == 0


@pytest.mark.parametrize("which", ["large", "small"])
def test_txt2img_is_deterministic_by_seed(which, request):
    model = request.getfixturevalue(which)
    a, b = model.txt2img(REQ), model.txt2img(REQ)
    c = model.txt2img(GenerationRequest(**{**REQ.__dict__, "seed": 8}))
    assert a.size == (64, 64)
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


@pytest.mark.parametrize("which", ["large", "small"])
def test_img2img_refines_to_the_requested_size(which, request):
    model = request.getfixturevalue(which)
    source = Image.new("RGB", (96, 80), (200, 30, 30))
    a = model.img2img(REQ, source, strength=0.5)
    b = model.img2img(REQ, source, strength=0.5)
    assert a.size == (64, 64)
    assert np.array_equal(pixels(a), pixels(b))
    # Low strength stays close to the source; the change grows with strength.
    low = np.abs(pixels(model.img2img(REQ, source.resize((64, 64)), 0.34)) - pixels(source.resize((64, 64)))).mean()
    full = np.abs(pixels(model.img2img(REQ, source.resize((64, 64)), 1.0)) - pixels(source.resize((64, 64)))).mean()
    assert low < full


def test_bad_requests_are_named(large):
    with pytest.raises(InvalidRequestError, match="width=65"):
        large.check_request(GenerationRequest("x", 65, 64, 2, 0))
    with pytest.raises(InvalidRequestError, match="largest size"):
        large.check_request(GenerationRequest("x", 512, 512, 2, 0))
    with pytest.raises(InvalidRequestError, match="steps=0"):
        large.check_request(GenerationRequest("x", 64, 64, 0, 0))
    with pytest.raises(InvalidRequestError, match="prompt"):
        large.check_request(GenerationRequest("  ", 64, 64, 2, 0))
    with pytest.raises(InvalidRequestError, match="strength"):
        large.img2img(REQ, Image.new("RGB", (64, 64)), strength=0.0)


def test_missing_or_foreign_model_path(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_pipeline(ModelSpec(source=str(tmp_path / "nope")))
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load_pipeline(ModelSpec(source=str(tmp_path)))


def test_hub_id_offline_fails_clearly():
    with pytest.raises(ModelLoadError, match="stabilityai/stable-diffusion-3.5-large"):
        load_pipeline(ModelSpec(source="stabilityai/stable-diffusion-3.5-large"))


def test_offline_tokenizer_matches_open_clip(tmp_path):
    import open_clip

    ours = build_clip_tokenizer(tmp_path)
    reference = open_clip.get_tokenizer("ViT-B-32")
    for text in ["a photo of a cat", "Portrait of an astronaut, trending on artstation, 8k!!", "héllo wörld 🧑‍🚀"]:
        ids = ours(text)["input_ids"]
        assert ids == reference([text])[0].tolist()[: len(ids)]


def test_open_clip_embedder_shapes_and_norms(tiny_zoo):
    emb = build_embedder(
        EmbedderConfig(kind="open_clip", model=f"local-dir:{tiny_zoo.clip}", device="cpu", batch_size=2)
    )
    text = emb.embed_text(["a", "b c", "d e f"])  # 2 batches
    images = emb.embed_images(
        [Image.new("RGB", (64, 64)), Image.new("RGB", (100, 30), "red"), Image.new("L", (40, 40))]
    )
    for x in (text, images):
        assert x.shape == (3, 64) and x.dtype == np.float32 and x.flags.c_contiguous
        assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert np.allclose(emb.embed_for_cache([Image.new("RGB", (64, 64))], ["x"]), images[:1], atol=1e-6)
    with pytest.raises(ValueError, match="prompt 1"):
        emb.embed_text(["ok", ""])


def test_minilm_ranks_a_paraphrase_above_an_unrelated_prompt(minilm):
    q, para, other = minilm.embed_text(
        ["a cute cat sitting on a sofa", "a kitten lying on a couch", "a spaceship orbiting jupiter"]
    )
    assert q @ para > 0.5 > 0.2 > q @ other
    assert minilm.embed_text(["x"]).shape == (1, 384)
    assert np.allclose(minilm.embed_for_cache([None], ["a cute cat sitting on a sofa"])[0], q, atol=1e-6)
    with pytest.raises(TypeError, match="text only"):
        minilm.embed_images([Image.new("RGB", (8, 8))])


def test_minilm_in_bfloat16_keeps_similarities_within_its_documented_bound(minilm):
    prompts = ["a cute cat sitting on a sofa", "a kitten lying on a couch", "a spaceship orbiting jupiter", "x"]
    half = build_embedder(EmbedderConfig(kind="minilm", device="cpu", dtype="bfloat16"))
    assert next(half.model.parameters()).dtype == torch.bfloat16
    full, low = minilm.embed_text(prompts), half.embed_text(prompts)
    assert low.dtype == np.float32 and np.allclose(np.linalg.norm(low, axis=1), 1.0, atol=1e-5)
    assert np.abs(low @ low.T - full @ full.T).max() < 0.003  # EmbedderConfig.dtype's description


def test_generation_leaves_global_rng_alone(large):
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    large.txt2img(REQ)
    assert torch.equal(torch.rand(1), expected)


def test_refinement_with_few_steps_still_runs_a_step(small):
    # 2 steps at strength 0.4 would round to zero denoising steps.
    out = small.img2img(GenerationRequest("x", 64, 64, 2, 0), Image.new("RGB", (64, 64), "blue"), strength=0.4)
    assert out.size == (64, 64)
