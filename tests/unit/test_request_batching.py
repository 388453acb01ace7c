"""Request-level batching on the tiny zoo's real pipelines (SD3-class large, SDXL-class small): every image of a batch
equals its unbatched generation within 1 grey level, incompatible requests do not share a call, a bad request or a
failing one fails alone, a cancel leaves its batch without harming the others, and the measured costs feed capacity."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from modm.config import ModelSpec
from modm.generation import (
    DiffusionGenerator,
    GenerationRequest,
    InMemoryModelMetrics,
    InvalidRequestError,
    ModelService,
    RequestBatchingGenerator,
    batching_generator,
)
from modm.generation.local import LocalGenerator

SIZE = 64
SPEC = {"device": "cpu", "default_size": SIZE, "max_size": 128, "num_inference_steps": 4}


@pytest.fixture(scope="module")
def diffusions(tiny_zoo):
    return {
        role: DiffusionGenerator.from_spec(ModelSpec(source=str(getattr(tiny_zoo, role)), **SPEC), role)
        for role in ("large", "small")
    }


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def assert_same_image(a, b) -> None:
    assert np.abs(_pixels(a) - _pixels(b)).max() <= 1


def _batcher(diffusion, *, max_batch_size: int = 4, max_wait_s: float = 0.2) -> RequestBatchingGenerator:
    return RequestBatchingGenerator(diffusion, max_batch_size=max_batch_size, max_wait_s=max_wait_s)


def _req(prompt: str, seed: int, steps: int = 4) -> GenerationRequest:
    return GenerationRequest(prompt, SIZE, SIZE, steps, seed)


PROMPTS = ["a red boat", "a blue house on a hill", "two green cats", "a yellow kite over the sea"]


@pytest.mark.parametrize("role", ["large", "small"])
def test_a_batch_of_txt2img_equals_each_request_alone(diffusions, role):
    diffusion = diffusions[role]
    batcher = _batcher(diffusion)
    requests = [_req(p, seed) for seed, p in enumerate(PROMPTS)]

    async def run():
        return await asyncio.gather(*(batcher.txt2img(r) for r in requests))

    batched = asyncio.run(run())
    for request, image in zip(requests, batched):
        assert_same_image(image, diffusion.txt2img(request))
    assert batcher.costs.as_dict()["passes"] == {4: 1}  # one call of four
    assert batcher.counters.generations == 4 and batcher.counters.denoising_steps == 4 * 4


def test_refinements_batch_per_strength_and_equal_their_unbatched_runs(diffusions):
    small = diffusions["small"]
    batcher = _batcher(small)
    source = diffusions["large"].txt2img(_req("a red boat", 0))
    jobs = [(_req(p, seed), strength) for seed, (p, strength) in enumerate(zip(PROMPTS, (0.5, 0.5, 0.75, 0.5)))]

    async def run():
        return await asyncio.gather(*(batcher.img2img(r, source, strength) for r, strength in jobs))

    batched = asyncio.run(run())
    for (request, strength), image in zip(jobs, batched):
        assert_same_image(image, small.img2img(request, source, strength))
    assert batcher.costs.as_dict()["passes"] == {3: 1, 1: 1}  # strength 0.5 x3 together, 0.75 alone


def test_snapshots_and_resumes_batch_and_equal_their_unbatched_runs(diffusions):
    large = diffusions["large"]
    batcher = _batcher(large)
    requests = [_req(p, seed) for seed, p in enumerate(PROMPTS[:3])]

    async def snapshots():
        return await asyncio.gather(*(batcher.txt2img_with_snapshots(r, (2,)) for r in requests))

    batched = asyncio.run(snapshots())
    for request, (image, latents) in zip(requests, batched):
        alone_image, alone_latents = large.txt2img_with_snapshots(request, (2,))
        assert_same_image(image, alone_image)
        assert latents[2].shape == alone_latents[2].shape and latents[2].shape[0] == 1
        assert (latents[2] - alone_latents[2]).abs().max() < 1e-4

    async def resumes():
        return await asyncio.gather(*(batcher.resume(r, latents[2], 2) for r, (_, latents) in zip(requests, batched)))

    resumed = asyncio.run(resumes())
    for request, image, (_, latents) in zip(requests, resumed, batched):
        assert_same_image(image, large.resume(request, latents[2], 2))
    assert batcher.costs.as_dict()["passes"] == {3: 2}


def test_incompatible_requests_run_in_separate_calls(diffusions):
    batcher = _batcher(diffusions["large"])
    requests = [_req("a red boat", 0, steps=4), _req("a red boat", 1, steps=3), GenerationRequest("x", 32, 32, 4, 2)]

    async def run():
        return await asyncio.gather(*(batcher.txt2img(r) for r in requests))

    images = asyncio.run(run())
    assert [im.size for im in images] == [(SIZE, SIZE), (SIZE, SIZE), (32, 32)]
    assert batcher.costs.as_dict()["passes"] == {1: 3}


def test_a_bad_request_fails_alone_with_its_own_error(diffusions):
    large = diffusions["large"]
    batcher = _batcher(large)

    async def run():
        return await asyncio.gather(
            batcher.txt2img(_req("a red boat", 0)),
            batcher.txt2img(GenerationRequest("a red boat", 60, 64, 4, 1)),  # not a multiple of the patch
            batcher.txt2img(_req("two green cats", 2)),
            return_exceptions=True,
        )

    good, bad, other = asyncio.run(run())
    assert isinstance(bad, InvalidRequestError) and "multiple" in str(bad)
    assert_same_image(good, large.txt2img(_req("a red boat", 0)))
    assert_same_image(other, large.txt2img(_req("two green cats", 2)))
    assert batcher.costs.as_dict()["passes"] == {2: 1}


def test_a_batch_that_fails_is_rerun_one_by_one_so_only_the_culprit_fails(diffusions, monkeypatch):
    large = diffusions["large"]
    batcher = _batcher(large)
    real = large.txt2img_batch

    def poisoned(requests, control=None):
        if any(r.prompt == "poison" for r in requests):
            raise RuntimeError("the poison prompt broke the pipeline")
        return real(requests, control)

    monkeypatch.setattr(large, "txt2img_batch", poisoned)

    async def run():
        return await asyncio.gather(
            batcher.txt2img(_req("a red boat", 0)),
            batcher.txt2img(_req("poison", 1)),
            batcher.txt2img(_req("two green cats", 2)),
            return_exceptions=True,
        )

    good, bad, other = asyncio.run(run())
    assert isinstance(bad, RuntimeError) and "poison" in str(bad)
    monkeypatch.setattr(large, "txt2img_batch", real)
    assert_same_image(good, large.txt2img(_req("a red boat", 0)))
    assert_same_image(other, large.txt2img(_req("two green cats", 2)))


def test_a_cancelled_request_leaves_its_batch_and_the_others_are_unharmed(diffusions):
    large = diffusions["large"]
    batcher = _batcher(large, max_wait_s=0.05)
    steps = 8

    async def run():
        tasks = [asyncio.ensure_future(batcher.txt2img(_req(p, seed, steps))) for seed, p in enumerate(PROMPTS[:3])]
        while batcher.counters.generations < 3 or batcher._queue:  # all three joined and their batch started
            await asyncio.sleep(0.005)
        tasks[1].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    first, cancelled, third = asyncio.run(run())
    assert isinstance(cancelled, asyncio.CancelledError)
    assert batcher.counters.interrupted == 1
    assert_same_image(first, large.txt2img(_req(PROMPTS[0], 0, steps)))
    assert_same_image(third, large.txt2img(_req(PROMPTS[2], 2, steps)))


def test_a_batch_whose_requests_all_left_stops_at_its_next_step(diffusions):
    batcher = _batcher(diffusions["large"], max_wait_s=0.0)
    steps = 400

    async def run():
        task = asyncio.ensure_future(batcher.txt2img(_req("a red boat", 0, steps)))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        while batcher._dispatcher is not None and not batcher._dispatcher.done():
            await asyncio.sleep(0.01)

    asyncio.run(run())
    assert 0 < batcher.counters.denoising_steps < steps
    assert batcher.costs.as_dict()["passes"] == {}  # a stopped call says nothing about cost


def test_a_request_waiting_behind_a_running_batch_starts_without_waiting_again(diffusions):
    batcher = _batcher(diffusions["large"], max_batch_size=2, max_wait_s=0.05)

    async def run():
        first = [asyncio.ensure_future(batcher.txt2img(_req(p, s, 8))) for s, p in enumerate(PROMPTS[:2])]
        while batcher.counters.generations < 2 or batcher._queue:  # the first batch (full) is running
            await asyncio.sleep(0.005)
        later = [asyncio.ensure_future(batcher.txt2img(_req(p, s, 8))) for s, p in enumerate(PROMPTS[2:])]
        await asyncio.gather(*first, *later)

    asyncio.run(run())
    assert batcher.costs.as_dict()["passes"] == {2: 2}


def test_closing_fails_queued_requests_and_refuses_new_ones(diffusions):
    batcher = _batcher(diffusions["large"], max_wait_s=5.0)

    async def run():
        task = asyncio.ensure_future(batcher.txt2img(_req("a red boat", 0)))
        await asyncio.sleep(0.05)
        batcher.close()
        with pytest.raises(RuntimeError, match="shutting down"):
            await task
        with pytest.raises(RuntimeError, match="shutting down"):
            await batcher.txt2img(_req("a red boat", 1))

    asyncio.run(run())


def test_the_spec_picks_the_engine(diffusions):
    large = diffusions["large"]
    assert isinstance(batching_generator(large, ModelSpec(source="x", **SPEC)), LocalGenerator)
    one = ModelSpec(source="x", **SPEC, batching={"engine": "request", "max_batch_size": 1})
    assert isinstance(batching_generator(large, one), LocalGenerator)
    request = ModelSpec(source="x", **SPEC, batching={"engine": "request", "max_batch_size": 8, "max_wait_ms": 3})
    engine = batching_generator(large, request)
    assert isinstance(engine, RequestBatchingGenerator)
    assert (engine.max_batch_size, engine.max_wait_s) == (8, 0.003)


def test_the_service_reports_batch_costs_and_batch_sizes(diffusions):
    spec = ModelSpec(source="x", **SPEC, batching={"engine": "request", "max_batch_size": 4, "max_wait_ms": 200})
    metrics = InMemoryModelMetrics()
    service = ModelService(batching_generator(diffusions["large"], spec), spec, metrics=metrics)

    async def run():
        await asyncio.gather(*(service.generate(p, SIZE, SIZE, 4, seed) for seed, p in enumerate(PROMPTS)))
        return await service.capacity()

    capacity = asyncio.run(run())
    assert capacity["max_batch_size"] == 4 and capacity["num_inference_steps"] == 4
    assert capacity["passes"] == {4: 1} and capacity["seconds_per_image_step"][4] > 0
    assert capacity["mean_batch_size"] == 4
    assert dict(metrics.batch_sizes) == {4: 1}
    assert metrics.count["generate"] == 4
