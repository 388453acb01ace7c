"""SANA image-to-image (MoDM's `edit()`): exact against text-to-image at strength 1, int(T*strength) steps below it,
and the start latents are the VAE-encoded image noised by the scheduler at the cut."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modm.config import ModelSpec
from modm.generation import DiffusionGenerator, GenerationRequest
from modm.generation.generator import image_to_image_twin
from modm.generation.sana_img2img import SanaImg2ImgPipeline, refine_start_step

sys.path.insert(0, str(Path(__file__).parent))
from tiny_families import tiny_sana_pipeline

STEPS, SIZE = 10, 32


@pytest.fixture(scope="module")
def sana():
    return tiny_sana_pipeline()


@pytest.fixture(scope="module")
def refiner(sana):
    pipe = SanaImg2ImgPipeline.from_pipe(sana)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


def _call(**kw) -> dict:
    return dict(
        prompt="a red fox in the snow",
        num_inference_steps=STEPS,
        guidance_scale=4.5,
        generator=torch.Generator("cpu").manual_seed(7),
        output_type="np",
        **kw,
    )


def test_strength_one_equals_text_to_image(sana, refiner):
    txt2img = sana(**_call(height=SIZE, width=SIZE, use_resolution_binning=False)).images
    refined = refiner(**_call(image=_image(), strength=1.0)).images
    assert refined.shape == txt2img.shape == (1, SIZE, SIZE, 3)
    np.testing.assert_array_equal(refined, txt2img)


@pytest.mark.parametrize("strength", [0.4, 0.7, 0.9])
def test_strength_runs_the_last_int_t_strength_steps_from_the_noised_image(sana, refiner, strength):
    steps_run, first_input = [], []

    def count(pipe, step, timestep, kwargs):
        steps_run.append(int(timestep))
        return {}

    hook = refiner.transformer.register_forward_pre_hook(
        lambda module, args: first_input.append(args[0][:1].clone()) if not first_input else None
    )
    try:
        refiner(**_call(image=_image(), strength=strength, callback_on_step_end=count))
    finally:
        hook.remove()
    assert len(steps_run) == int(STEPS * strength + 1e-6)
    scheduler = sana.scheduler
    scheduler.set_timesteps(STEPS)
    assert steps_run == [int(t) for t in scheduler.timesteps[STEPS - len(steps_run) :]]  # the schedule's tail
    # Start latents: (1 - sigma) * VAE latents * scaling_factor + sigma * noise, at the cut's sigma.
    start = refine_start_step(STEPS, strength)
    noise = torch.randn((1, 4, SIZE // 2, SIZE // 2), generator=torch.Generator("cpu").manual_seed(7))
    pixels = refiner.image_processor.preprocess(_image())
    with torch.no_grad():
        latents = refiner.vae.encode(pixels).latent * refiner.vae.config.scaling_factor
    sigma = float(scheduler.sigmas[start])
    torch.testing.assert_close(first_input[0], (1 - sigma) * latents + sigma * noise, rtol=1e-5, atol=1e-5)


def test_lower_strength_stays_closer_to_the_image(refiner):
    """In latent space (the tiny VAE is random, so its pixels say nothing): fewer steps from a less noised image."""
    pixels = refiner.image_processor.preprocess(_image())
    with torch.no_grad():
        image_latents = refiner.vae.encode(pixels).latent * refiner.vae.config.scaling_factor
    distance = {}
    for strength in (0.2, 0.9):
        out = refiner(**{**_call(image=_image(), strength=strength), "output_type": "latent"}).images
        distance[strength] = float((out - image_latents).abs().mean())
    assert distance[0.2] < distance[0.9]


def test_start_step_is_moDMs_cut():
    assert [refine_start_step(50, 1 - k / 50) for k in (5, 10, 15, 25, 30)] == [5, 10, 15, 25, 30]
    assert refine_start_step(50, 1.0) == 0
    with pytest.raises(ValueError, match="strength=0"):
        refine_start_step(50, 0.0)
    with pytest.raises(ValueError, match="runs no denoising step"):
        refine_start_step(50, 0.01)


def test_the_small_model_refines_sana_with_it(sana):
    twin = image_to_image_twin(sana)
    assert type(twin) is SanaImg2ImgPipeline and twin.transformer is sana.transformer  # weights shared
    small = DiffusionGenerator(
        sana, ModelSpec(source="tiny-sana", device="cpu", guidance_scale=4.5, default_size=SIZE, max_size=256), "small"
    )
    request = GenerationRequest(prompt="a red fox", width=SIZE, height=SIZE, steps=STEPS, seed=1)
    out = small.img2img(request, _image(), strength=0.5)
    assert out.size == (SIZE, SIZE)
    assert small.txt2img(request).size == (SIZE, SIZE)  # generated at the requested size, not SANA's bins


def test_bad_calls_are_named(refiner):
    with pytest.raises(ValueError, match="image is required"):
        refiner(prompt="x", strength=0.5)
    with pytest.raises(ValueError, match="latents cannot be set"):
        refiner(prompt="x", image=_image(), latents=torch.zeros(1))


def test_sana_generates_the_requested_size_with_its_token_count(sana):
    from modm.generation import spec_call_kwargs

    spec = ModelSpec(source="tiny-sana", device="cpu", max_sequence_length=300)
    assert spec_call_kwargs(sana, spec) == {"max_sequence_length": 300, "use_resolution_binning": False}
