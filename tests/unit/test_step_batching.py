"""Step-level batching: requests of the tiny zoo's SD3-class (large) and SDXL-class (small) pipelines share denoiser
passes, join and leave at step boundaries, and each image equals its unbatched DiffusionGenerator generation."""

import asyncio
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from modm.config import BatchingConfig, ModelSpec
from modm.generation import (
    DiffusionGenerator,
    GenerationRequest,
    InvalidRequestError,
    RequestBatchingGenerator,
    batching_generator,
)
from modm.generation.step_batching import EngineClosedError, StepBatchingGenerator
from modm.generation.steps import StepControl

sys.path.insert(0, str(Path(__file__).parent))
from tiny_families import tiny_flux_pipeline, tiny_sana_pipeline

ROLES = ["large", "small"]  # SD3 (flow matching), SDXL (Euler, scaled model input, time ids)
# Steps of a run that must still be running when the test acts on it: the SDXL-class pass is about 8x quicker.
LONG_RUN = {"large": 12, "small": 60}


@pytest.fixture(scope="module")
def models(tiny_zoo):
    spec = {"device": "cpu", "default_size": 64, "max_size": 128, "max_sequence_length": 1}  # 1 T5 token: quicker
    return {
        role: DiffusionGenerator.from_spec(ModelSpec(source=str(getattr(tiny_zoo, role)), **spec), role)
        for role in ROLES
    }


@pytest.fixture
def engine(models, request):
    """A StepBatchingGenerator on models[role] (the test's `role` parameter) and the batch sizes of its passes;
    the test's `max_batch_size` parameter, if any, sets its batch size."""
    passes: list[int] = []

    def on_pass(size: int, seconds: float, steps: int) -> None:
        assert seconds > 0 and steps == 1
        passes.append(size)

    params = request.node.callspec.params
    # max_wait_s: requests started together share their first pass even when a busy machine stalls the test.
    generator = StepBatchingGenerator(
        models[params["role"]], max_batch_size=params.get("max_batch_size", 8), max_wait_s=0.2, on_pass=on_pass
    )
    yield generator, passes
    generator.close()


def latent_shape(diffusion: DiffusionGenerator, width: int, height: int) -> tuple[int, ...]:
    denoiser = getattr(diffusion.pipe, "transformer", None) or diffusion.pipe.unet
    factor = diffusion.pipe.vae_scale_factor
    return (1, denoiser.config.in_channels, height // factor, width // factor)


def grey_levels(a, b) -> int:
    """Largest difference between two images' uint8 pixels."""
    return int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max())


def req(prompt="a red boat", steps=6, seed=1, width=64, height=64, guidance=None) -> GenerationRequest:
    return GenerationRequest(prompt, width, height, steps, seed, guidance_scale=guidance)


async def until(condition, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.001)


@pytest.mark.parametrize("role", ROLES)
def test_a_mixed_batch_gives_every_request_its_unbatched_image(models, engine, role):
    diffusion, (generator, passes) = models[role], engine
    full = [req(), req("a blue car", seed=2, guidance=1.0), req("a dog", steps=5, seed=3, width=32)]
    base = diffusion.txt2img(full[0])
    snapshot_req = req("a green tree", seed=4)
    controls = [StepControl() for _ in range(8)]  # count the unbatched runs' steps
    snapshot_image, snapshots = diffusion.txt2img_with_snapshots(snapshot_req, (2, 4), controls[0])
    expected = [diffusion.txt2img(r, control) for r, control in zip(full, controls[1:])]
    # Hits at different k: refinements at two strengths, NIRVANA resumes from two steps.
    expected += [diffusion.img2img(full[0], base, s, control) for s, control in zip((0.3, 0.7), controls[4:])]
    cached = {k: snapshots[k].half() for k in (2, 4)}  # as NIRVANA's cache keeps them
    expected += [diffusion.resume(snapshot_req, cached[k], k, control) for k, control in zip((2, 4), controls[6:])]

    async def batch():
        return await asyncio.gather(
            *[generator.txt2img(r) for r in full],
            *[generator.img2img(full[0], base, strength) for strength in (0.3, 0.7)],
            *[generator.resume(snapshot_req, cached[k], k) for k in (2, 4)],
            generator.txt2img_with_snapshots(snapshot_req, (2, 4)),
        )

    *images, (image, latents) = asyncio.run(batch())
    assert max(grey_levels(a, b) for a, b in zip(expected, images)) <= 1
    assert grey_levels(snapshot_image, image) <= 1 and sorted(latents) == [2, 4]
    assert all(torch.allclose(latents[k], snapshots[k], atol=1e-4) for k in (2, 4))
    assert max(passes) >= 6  # misses, refinements and resumes of one size shared passes
    assert 1 in passes  # the 32-pixel-wide request took its own passes
    steps = sum(control.steps_run for control in controls)
    assert generator.counters.as_dict() == {"generations": 8, "interrupted": 0, "denoising_steps": steps}
    assert sum(passes) == steps
    costs = generator.costs.as_dict()  # what the replica's capacity reads: seconds per image-step by batch size
    assert set(costs["passes"]) == set(passes) and all(s > 0 for s in costs["seconds_per_image_step"].values())


@pytest.mark.parametrize("role", ROLES)
def test_a_request_joins_a_running_batch_at_a_step_boundary(models, engine, role):
    diffusion, (generator, passes) = models[role], engine
    first, second = req(steps=LONG_RUN[role]), req("a yellow house", steps=3, seed=5)

    async def run():
        running = asyncio.ensure_future(generator.txt2img(first))
        await until(lambda: len(passes) >= 3)
        return await asyncio.gather(running, generator.txt2img(second))

    images = asyncio.run(run())
    assert passes[:3] == [1, 1, 1] and 2 in passes
    assert max(grey_levels(diffusion.txt2img(r), image) for r, image in zip((first, second), images)) <= 1


@pytest.mark.parametrize("role", ROLES)
def test_a_cancelled_request_leaves_the_batch_and_the_others_run_on(models, engine, role):
    diffusion, (generator, passes) = models[role], engine
    steps = LONG_RUN[role]
    keep = [req(steps=steps), req("a blue car", steps=steps, seed=2)]

    async def run():
        tasks = [asyncio.ensure_future(generator.txt2img(r)) for r in keep]
        doomed = asyncio.ensure_future(generator.txt2img(req("a dog", steps=steps, seed=3)))
        await until(lambda: len(passes) >= 3)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        left_after = len(passes)  # the cancel returned once the request had left the batch
        return await asyncio.gather(*tasks), left_after

    images, left_after = asyncio.run(run())
    assert max(grey_levels(diffusion.txt2img(r), image) for r, image in zip(keep, images)) <= 1
    assert passes[:3] == [3, 3, 3] and passes[left_after:] == [2] * (steps - left_after)
    counters = generator.counters
    assert counters.interrupted == 1 and counters.generations == 3 and counters.denoising_steps == sum(passes)


@pytest.mark.parametrize(("role", "max_batch_size"), [("small", 1)])  # the second request waits for room
def test_a_request_cancelled_while_waiting_never_runs(engine, role, max_batch_size):
    generator, passes = engine

    async def run():
        running = asyncio.ensure_future(generator.txt2img(req(steps=LONG_RUN[role])))
        waiting = asyncio.ensure_future(generator.txt2img(req(seed=9)))
        await until(lambda: len(passes) >= 2)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not running.done()
        await running

    asyncio.run(run())
    steps = LONG_RUN[role]
    assert passes == [1] * steps and generator.counters.as_dict() == {
        "generations": 2,
        "interrupted": 1,
        "denoising_steps": steps,
    }


@pytest.mark.parametrize("role", ROLES)
def test_bad_requests_fail_alone_with_their_own_error(models, engine, role):
    diffusion, (generator, _) = models[role], engine
    good = req()
    base = diffusion.txt2img(good)
    wrong_latents = torch.zeros(1, 3, 5, 5)

    async def run():
        return await asyncio.gather(
            generator.txt2img(good),
            generator.txt2img(req(width=65)),
            generator.txt2img(req(prompt=" ")),
            generator.img2img(good, base, 0.0),
            generator.resume(good, wrong_latents, 2),
            generator.resume(good, torch.zeros(latent_shape(diffusion, 64, 64)), 6),
            generator.resume(good, torch.full(latent_shape(diffusion, 64, 64), float("nan")), 2),
            generator.txt2img_with_snapshots(good, (6,)),
            return_exceptions=True,
        )

    image, *errors = asyncio.run(run())
    assert grey_levels(image, base) <= 1
    assert all(isinstance(error, InvalidRequestError) for error in errors), errors
    assert "(1, 3, 5, 5)" in str(errors[3]) and "after step 6" in str(errors[4]) and "NaN" in str(errors[5])


@pytest.fixture
def faulty_denoiser(models, request, monkeypatch):
    """The role's denoiser fails (as a device would) on every input of more rows than `fault.max_rows`."""
    diffusion = models[request.node.callspec.params["role"]]
    denoiser = getattr(diffusion.pipe, "transformer", None) or diffusion.pipe.unet
    forward = denoiser.forward

    class Fault:
        max_rows = 2

    def faulty(*args, **kwargs):
        sample = args[0] if args else kwargs["hidden_states"]  # the UNet's is positional, SD3's a keyword
        if len(sample) > Fault.max_rows:
            raise RuntimeError("device fault")
        return forward(*args, **kwargs)

    monkeypatch.setattr(denoiser, "forward", faulty)
    return Fault


@pytest.mark.parametrize("role", ROLES)
def test_a_failing_pass_runs_again_one_request_at_a_time(models, engine, role, faulty_denoiser):
    diffusion, (generator, passes) = models[role], engine
    requests = [req(), req("a blue car", seed=2)]  # guided: two rows each, four together

    async def run():
        return await asyncio.gather(*[generator.txt2img(r) for r in requests])

    images = asyncio.run(run())
    assert max(grey_levels(diffusion.txt2img(r), image) for r, image in zip(requests, images)) <= 1
    assert passes == [1] * 12  # the shared passes failed; none of the requests moved on in them


@pytest.mark.parametrize("role", ["large"])
def test_a_request_that_fails_alone_gets_its_error_and_the_engine_serves_on(models, engine, role, faulty_denoiser):
    diffusion, (generator, _) = models[role], engine
    faulty_denoiser.max_rows = 1  # every guided request fails, an unguided one runs

    async def run():
        return await asyncio.gather(
            generator.txt2img(req()), generator.txt2img(req(seed=2, guidance=1.0)), return_exceptions=True
        )

    failed, image = asyncio.run(run())
    assert isinstance(failed, RuntimeError) and str(failed) == "device fault"
    assert grey_levels(image, diffusion.txt2img(req(seed=2, guidance=1.0))) <= 1
    faulty_denoiser.max_rows = 2
    assert grey_levels(asyncio.run(generator.txt2img(req(seed=3))), diffusion.txt2img(req(seed=3))) <= 1
    generator.check_health()


@pytest.mark.parametrize("role", ["small"])
def test_close_fails_later_calls_clearly(engine, role):
    generator, _ = engine
    generator.close()
    generator.close()
    with pytest.raises(EngineClosedError, match="small model's step-batching engine is closed"):
        asyncio.run(generator.txt2img(req()))
    with pytest.raises(RuntimeError, match="has stopped"):
        generator.check_health()


def test_only_sd3_and_sdxl_families_with_single_call_steps_are_step_batched(models, tmp_path):
    from diffusers import HeunDiscreteScheduler

    from modm.models.tokenizer import build_clip_tokenizer

    assert [StepBatchingGenerator.unsupported(models[role].pipe) for role in ROLES] == [None, None]
    flux = tiny_flux_pipeline(build_clip_tokenizer(tmp_path))
    assert "FluxPipeline is not a step-batched pipeline" in StepBatchingGenerator.unsupported(flux)
    assert "SanaPipeline is not a step-batched pipeline" in StepBatchingGenerator.unsupported(tiny_sana_pipeline())
    small = models["small"].pipe
    heun = type(small)(**{**small.components, "scheduler": HeunDiscreteScheduler.from_config(small.scheduler.config)})
    assert "calls the denoiser 2 times per step" in StepBatchingGenerator.unsupported(heun)
    # The replica's factory runs what cannot be step-batched as request-level batches instead.
    batching = BatchingConfig(engine="step", max_batch_size=4)
    spec = models["large"].spec.model_copy(update={"batching": batching})
    picked = [
        batching_generator(DiffusionGenerator(pipe, spec, "large"), spec) for pipe in (models["large"].pipe, flux)
    ]
    assert [type(generator) for generator in picked] == [StepBatchingGenerator, RequestBatchingGenerator]
    for generator in picked:
        generator.close()
    with pytest.raises(ValueError, match="cannot be step-batched"):
        StepBatchingGenerator(DiffusionGenerator(flux, models["large"].spec, "large"), max_batch_size=2, max_wait_s=0.0)
