"""ModelService over the Generator interface: cancellation at a step boundary, counters, metrics, the profile lock,
and operations a generator cannot run (fakes for speed; the tiny zoo for the real pipelines)."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from modm.config import ModelSpec
from modm.generation import (
    GenerationRequest,
    InMemoryModelMetrics,
    LocalGenerator,
    ModelService,
    UnsupportedOperationError,
)

SPEC = ModelSpec(source="stand-in", device="cpu", default_size=64, max_size=128, num_inference_steps=5)


class SteppingModel:
    """Stands in for a DiffusionGenerator: one 'denoising step' per step_s, each through the real StepControl."""

    device = "cpu"
    size_multiple = 8

    def __init__(self, name: str = "large", step_s: float = 0.002):
        self.name = name
        self.step_s = step_s
        self.calls = 0
        self.running = 0  # threads inside txt2img right now
        self.refine_pipe_built = False
        self._lock = threading.Lock()

    @property
    def refine_pipe(self):
        self.refine_pipe_built = True
        return object()

    def txt2img(self, req: GenerationRequest, control) -> Image.Image:
        with self._lock:
            self.calls += 1
            self.running += 1
        try:
            for step in range(req.steps):
                time.sleep(self.step_s)
                control.on_step_end(None, step, None, {})
            return Image.new("RGB", (req.width, req.height), (req.seed % 256, 0, 0))
        finally:
            with self._lock:
                self.running -= 1


def _service(model: SteppingModel, **kwargs) -> tuple[ModelService, InMemoryModelMetrics]:
    metrics = InMemoryModelMetrics()
    return ModelService(LocalGenerator(model), SPEC, metrics=metrics, **kwargs), metrics


def test_a_cancelled_generation_stops_at_its_next_step_and_holds_the_slot_until_then():
    model = SteppingModel(step_s=0.005)
    service, metrics = _service(model)

    async def cancel_after(delay_s: float) -> int:
        call = asyncio.ensure_future(service.generate("a red boat", 64, 64, 10_000, 0))
        await asyncio.sleep(delay_s)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        return model.running  # read the moment the caller got its CancelledError

    running_when_released = asyncio.run(cancel_after(0.1))
    stats = service.stats()
    assert running_when_released == 0  # the worker thread had left the pipeline before the caller was released
    assert stats["generations"] == 1 and stats["interrupted"] == 1, stats
    assert 1 <= stats["denoising_steps"] < 1000, stats
    assert dict(metrics.count) == {}  # a cancelled generation reports no compute time


def test_a_second_cancel_does_not_release_the_slot_before_the_generation_stopped():
    model = SteppingModel(step_s=0.2)  # the stop takes up to one slow step to be seen
    service, _ = _service(model)

    async def cancel_twice() -> int:
        call = asyncio.ensure_future(service.generate("a red boat", 64, 64, 1_000, 0))
        await asyncio.sleep(0.05)
        call.cancel()
        await asyncio.sleep(0.01)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        return model.running

    assert asyncio.run(cancel_twice()) == 0
    assert service.stats()["interrupted"] == 1


def test_finished_generations_count_every_step_and_report_compute_time():
    model = SteppingModel()
    service, metrics = _service(model)

    async def three():
        return await asyncio.gather(*(service.generate("a red boat", 64, 64, 4, seed) for seed in range(3)))

    pngs = asyncio.run(three())
    assert [Image.open(io.BytesIO(png)).getpixel((0, 0)) for png in pngs] == [(0, 0, 0), (1, 0, 0), (2, 0, 0)]
    assert service.stats() == {"generations": 3, "interrupted": 0, "denoising_steps": 12}
    assert metrics.count["generate"] == 3 and metrics.seconds["generate"] > 0


def test_profile_measures_once_however_many_ask_at_once():
    model = SteppingModel()
    service, _ = _service(model)

    async def five():
        return await asyncio.gather(*(service.profile() for _ in range(5)))

    latencies = asyncio.run(five())
    assert len(set(latencies)) == 1 and latencies[0] > 0
    assert model.calls == 2  # a warm-up and one timed run at the spec's default size and steps
    assert service.stats()["denoising_steps"] == 2 * SPEC.num_inference_steps
    configured = ModelService(LocalGenerator(model), SPEC.model_copy(update={"profiled_latency_s": 1.5}))
    assert asyncio.run(configured.profile()) == 1.5 and model.calls == 2


def test_the_small_model_builds_its_refine_pipeline_at_start_up():
    large, small = SteppingModel("large"), SteppingModel("small")
    ModelService(LocalGenerator(large), SPEC)
    ModelService(LocalGenerator(small), SPEC)
    assert (large.refine_pipe_built, small.refine_pipe_built) == (False, True)


def test_info_names_the_generators_size_rule_and_operations():
    service, _ = _service(SteppingModel())
    assert asyncio.run(service.info()) == {
        "role": "large",
        "source": "stand-in",
        "size_multiple": 8,
        "default_size": 64,
        "max_size": 128,
        "num_inference_steps": 5,
        "operations": ["img2img", "resume", "txt2img", "txt2img_with_snapshots"],
        "max_batch_size": 1,
    }


def test_a_parallel_generator_refuses_what_its_method_cannot_do_by_name():
    from deployments.actor_group import ActorGroupGenerator
    from modm.parallel import ParallelConfig

    group = SimpleNamespace(  # a started group as the generator reads it; no request reaches it
        name="small",
        size_multiple=32,
        devices=["cpu", "cpu"],
        world_size=2,
        config=ParallelConfig(method="distrifusion", world_size=2),
    )
    with pytest.raises(
        UnsupportedOperationError,
        match="small model runs distrifusion parallel inference, which does not do img2img \\(only txt2img\\)",
    ):
        ModelService(ActorGroupGenerator(group), SPEC)  # a small model must refine
    group.name = "large"
    service = ModelService(ActorGroupGenerator(group), SPEC)
    with pytest.raises(UnsupportedOperationError, match="does not do resume"):
        asyncio.run(service.resume("a red boat", np.zeros((1, 4, 8, 8), np.float16), 2, 64, 64, 4, 0))
    assert asyncio.run(service.info())["operations"] == ["txt2img"] and service.stats()["generations"] == 0


# ------------------------------------------------------------------------------------------ the tiny zoo's models
@pytest.fixture(scope="module")
def services(tiny_zoo):
    spec = {"device": "cpu", "default_size": 64, "max_size": 128}
    large = LocalGenerator.from_spec(ModelSpec(source=str(tiny_zoo.large), **spec), "large")
    small = LocalGenerator.from_spec(ModelSpec(source=str(tiny_zoo.small), **spec), "small")
    return (
        ModelService(large, large.diffusion.spec, snapshot_steps=(2,)),
        ModelService(small, small.diffusion.spec),
    )


def test_every_operation_through_the_service_on_real_pipelines(services):
    large, small = services
    png = asyncio.run(small.generate("a red boat", 64, 64, 3, 0))
    refined = asyncio.run(small.refine("a red boat", png, 0.5, 64, 64, 4, 0))
    assert Image.open(io.BytesIO(refined)).size == (64, 64)
    assert small.stats() == {"generations": 2, "interrupted": 0, "denoising_steps": 3 + 2}

    full, latents = asyncio.run(large.generate_with_snapshots("a red boat", 64, 64, 4, 7))
    assert list(latents) == [2] and latents[2].dtype == np.float16 and latents[2].shape[0] == 1
    resumed = asyncio.run(large.resume("a red boat", latents[2], 2, 64, 64, 4, 7))
    # NIRVANA's hit: the tail of the same run from its float16 latents gives the miss's image again.
    diff = np.abs(
        np.asarray(Image.open(io.BytesIO(full)), np.int16) - np.asarray(Image.open(io.BytesIO(resumed)), np.int16)
    )
    assert diff.mean() < 1.0, diff.mean()
    assert large.stats() == {"generations": 2, "interrupted": 0, "denoising_steps": 4 + 2}


def test_a_cancelled_refinement_on_a_real_pipeline_stops_early(services):
    small = services[1]
    before = small.stats()
    png = asyncio.run(small.generate("a red boat", 64, 64, 2, 0))

    async def cancel_a_long_refinement():
        call = asyncio.ensure_future(small.refine("a red boat", png, 1.0, 64, 64, 400, 0))
        await asyncio.sleep(0.5)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    asyncio.run(cancel_a_long_refinement())
    after = small.stats()
    assert after["generations"] - before["generations"] == 2 and after["interrupted"] - before["interrupted"] == 1
    # it stopped between steps, before the 400th: how many it ran in 0.5 s depends on the machine (115 on an idle
    # 2-core one), so the bound is the full count, not a guess at the speed
    assert 1 <= after["denoising_steps"] - before["denoising_steps"] - 2 < 400, (before, after)
