"""NIRVANA resume on SD3 *and* FLUX at every k of MoDM's table (T=50): a run resumed from its own snapshot after k
steps ends within 1 grey level of the uninterrupted run.

FluxPipeline.__call__ calls `scheduler.set_begin_index(0)` itself, which undid the old resume (timesteps[k:] plus
set_begin_index(k)) and left a resumed FLUX run at a non-zero sigma."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from modm.config import ModelSpec
from modm.generation import DiffusionGenerator, GenerationRequest
from modm.generation.resume import schedule_from_step

sys.path.insert(0, str(Path(__file__).parent))
from tiny_families import tiny_flux_pipeline, tiny_sd3_pipeline

K_CHOICES = (5, 10, 15, 20, 25)
T = 50


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
    from modm.models.tokenizer import build_clip_tokenizer

    return build_clip_tokenizer(tmp_path_factory.mktemp("bpe"))


@pytest.fixture(scope="module")
def flux(clip_tokenizer):
    pipe = tiny_flux_pipeline(clip_tokenizer)
    spec = ModelSpec(
        source="tiny-flux", device="cpu", guidance_scale=3.5, max_sequence_length=32, default_size=16, max_size=256
    )
    return DiffusionGenerator(pipe, spec, "large")


@pytest.fixture(scope="module")
def sd3(clip_tokenizer):
    spec = ModelSpec(source="tiny-sd3", device="cpu", default_size=16, max_size=256)
    return DiffusionGenerator(tiny_sd3_pipeline(clip_tokenizer), spec, "large")


def _request(size: int) -> GenerationRequest:
    return GenerationRequest(prompt="a red fox in the snow", width=size, height=size, steps=T, seed=3)


@pytest.mark.parametrize("family,size", [("flux", 16), ("sd3", 16)])
def test_resume_reproduces_the_full_run_at_every_k(request, family, size):
    generator = request.getfixturevalue(family)
    generator.check_resumable()
    full, snapshots = generator.txt2img_with_snapshots(_request(size), K_CHOICES)
    for k in K_CHOICES:
        resumed = generator.resume(_request(size), snapshots[k], k)
        diff = np.abs(np.asarray(resumed, dtype=np.int16) - np.asarray(full, dtype=np.int16))
        assert diff.max() <= 1, f"{family}: resumed after step {k} differs from the full run by {diff.max()}"


def test_flux_resume_runs_the_tail_of_the_schedule_down_to_sigma_zero(flux):
    """The steps a resumed FLUX run takes are the last T-k of the full run's, ending at sigma 0."""
    seen, after_four = [], {}

    def record(pipe, step, timestep, kwargs):
        seen.append(float(timestep))
        if step == 3:
            after_four["latents"] = kwargs["latents"].clone()
        return {}

    pipe = flux.pipe
    call = dict(
        prompt="a fox",
        height=32,
        width=32,
        num_inference_steps=10,
        guidance_scale=3.5,
        max_sequence_length=32,
        output_type="latent",
        callback_on_step_end=record,
    )
    pipe(**call, generator=torch.Generator().manual_seed(0))
    full_steps, seen[:] = list(seen), []
    with schedule_from_step(pipe.scheduler, 4):
        pipe(**call, latents=after_four["latents"], generator=torch.Generator().manual_seed(0))
    assert seen == full_steps[4:]
    assert float(pipe.scheduler.sigmas[pipe.scheduler.step_index]) == 0.0  # the last step went to sigma 0
