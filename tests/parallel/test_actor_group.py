"""The Ray path: a ParallelActorGroup of 2 CPU actors serving a saved tiny SDXL pipeline (ModelSpec loader)."""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from PIL import Image  # noqa: E402

from deployments.actor_group import ActorGroupGenerator, ActorGroupUnhealthy, ParallelActorGroup  # noqa: E402
from modm.config.schema import ModelSpec  # noqa: E402
from modm.generation import (  # noqa: E402
    DiffusionGenerator,
    GenerationRequest,
    InMemoryModelMetrics,
    InvalidRequestError,
    ModelService,
    UnsupportedOperationError,
)
from modm.models.loading import load_pipeline  # noqa: E402
from modm.parallel import ParallelConfig, RendezvousError  # noqa: E402
from tiny import tiny_sdxl_pipeline  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

STEPS = 4
REQUEST = GenerationRequest("a lighthouse", 64, 64, STEPS, seed=3)  # the spec's guidance, as a ModelService asks


@pytest.fixture(scope="module")
def model_spec(tmp_path_factory, clip_tokenizer) -> ModelSpec:
    directory = tmp_path_factory.mktemp("tiny-sdxl")
    tiny_sdxl_pipeline(clip_tokenizer).save_pretrained(directory)
    return ModelSpec(source=str(directory), device="cpu")


def _reference(spec: ModelSpec, request: GenerationRequest) -> np.ndarray:
    """The same request on one device, through the same DiffusionGenerator the ranks hold."""
    pipe = load_pipeline(spec, device=torch.device("cpu"))
    return np.asarray(DiffusionGenerator(pipe, spec, "reference").txt2img(request), dtype=np.int16)


def _same_image(image: Image.Image, reference: np.ndarray) -> bool:
    """Synchronous DistriFusion matches one device to float rounding (1e-5): at most one grey level in 8 bits."""
    return np.abs(np.asarray(image, dtype=np.int16) - reference).max() <= 1


def _wait_until_dead(actor, timeout_s: float = 30.0) -> None:
    from ray.exceptions import RayActorError

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.ping.remote(), timeout=5)
        except RayActorError:
            return
        time.sleep(0.1)
    raise AssertionError(f"the killed actor still answered after {timeout_s}s")


def test_actor_group_serves_exact_distrifusion_and_notices_a_dead_worker(ray_cluster, model_spec):
    cfg = ParallelConfig(method="distrifusion", world_size=2, warmup_steps=STEPS, timeout_s=60)
    group = ParallelActorGroup(cfg, model_spec, cpus_per_rank=1, start_timeout_s=150, request_timeout_s=60)
    try:
        group.start()
        assert group.size_multiple == 32  # the tiny SDXL's 16 px patch, times 2 row stripes
        assert _same_image(group.generate(REQUEST), _reference(model_spec, REQUEST))
        # Bad input reaches every rank, which all raise the same clear error before any collective.
        with pytest.raises(InvalidRequestError, match="multiple of 32"):
            group.generate(replace(REQUEST, width=48, height=48))
        group.check_health()
        ray.kill(group.workers[1])
        _wait_until_dead(group.workers[1])  # ray.kill returns before the actor is gone; a ping may still answer
        with pytest.raises(ActorGroupUnhealthy, match="rank 1 of 2"):
            group.check_health()
        # A dead rank breaks the process group for good: no more work is sent to the survivor.
        with pytest.raises(ActorGroupUnhealthy, match="rank 1 of 2 is dead .* being replaced"):
            group.submit(REQUEST)
        with pytest.raises(ActorGroupUnhealthy, match="rank 1 of 2"):
            group.check_health()
    finally:
        group.shutdown()


def test_unsatisfiable_reservation_fails_within_the_start_timeout(ray_cluster, model_spec):
    cfg = ParallelConfig(method="distrifusion", world_size=16)  # the session cluster has 12 CPUs
    group = ParallelActorGroup(cfg, model_spec, cpus_per_rank=1, start_timeout_s=3)
    started = time.monotonic()
    with pytest.raises(RendezvousError, match="could not reserve 16 bundles"):
        group.start()
    assert time.monotonic() - started < 30


def test_a_cancelled_generation_stops_on_every_rank_in_the_given_placement_group(ray_cluster, model_spec):
    """Issue 13: the ranks go into the placement group they are given (a Serve replica's, bundle 0 being the
    replica's own). Issue 15: the group behind modm's Generator interface, under a ModelService as in the
    deployment: cancelling the awaiting task of a long generation stops it at its next step on both ranks and
    returns once they stopped, counted as on one device; the group then serves the next request exactly (no rank
    was left behind in a collective); what the parallel methods cannot do is refused by name."""
    from ray.util.placement_group import placement_group, remove_placement_group

    pg = placement_group([{"CPU": 0.1}, {"CPU": 1}, {"CPU": 1}], strategy="PACK")
    ray.get(pg.ready(), timeout=60)
    cfg = ParallelConfig(method="distrifusion", world_size=2, warmup_steps=STEPS, timeout_s=60)
    group = ParallelActorGroup(
        cfg,
        model_spec,
        name="large",
        cpus_per_rank=1,
        start_timeout_s=150,
        request_timeout_s=60,
        placement_group=pg,
        first_bundle=1,
    )
    try:
        group.start()
        pg_ids = ray.get(
            [
                w.__ray_call__.remote(lambda self: ray.get_runtime_context().get_placement_group_id())
                for w in group.workers
            ]
        )
        assert pg_ids == [pg.id.hex()] * 2
        generator = ActorGroupGenerator(group)
        metrics = InMemoryModelMetrics()
        service = ModelService(generator, model_spec.model_copy(update={"default_size": 64}), metrics=metrics)
        args = (REQUEST.prompt, REQUEST.width, REQUEST.height, REQUEST.steps, REQUEST.seed)

        async def warm_then_cancel_a_long_one() -> float:
            await service.generate(*args)  # warm: the long request's time is all denoising
            long = asyncio.ensure_future(service.generate(REQUEST.prompt, 64, 64, 400, 1))
            await asyncio.sleep(1.0)
            started = time.monotonic()
            long.cancel()
            with pytest.raises(asyncio.CancelledError):
                await long
            return time.monotonic() - started

        stopped_after_s = asyncio.run(warm_then_cancel_a_long_one())
        stats = service.stats()
        assert stats["generations"] == 2 and stats["interrupted"] == 1, stats
        long_steps = stats["denoising_steps"] - STEPS  # rank 0 reported the steps each ran
        assert 1 <= long_steps < 100, stats
        assert dict(metrics.count) == {"generate": 1}  # the cancelled one has no compute time
        png = asyncio.run(service.generate(*args))
        image = Image.open(io.BytesIO(png))
        assert _same_image(image, _reference(model_spec, REQUEST))
        assert service.stats()["denoising_steps"] == stats["denoising_steps"] + STEPS
        info = asyncio.run(service.info())
        assert info["size_multiple"] == 32 and info["operations"] == ["txt2img"]

        with pytest.raises(UnsupportedOperationError, match="large model runs distrifusion .* does not do img2img"):
            asyncio.run(service.refine(REQUEST.prompt, png, 0.5, 64, 64, STEPS, 0))
        with pytest.raises(UnsupportedOperationError, match="does not do resume, txt2img_with_snapshots"):
            ModelService(generator, model_spec, snapshot_steps=(2,))
        print(f"\ncancelled a 400-step generation after {long_steps} steps, {stopped_after_s:.2f}s after the cancel")
    finally:
        group.shutdown()
        remove_placement_group(pg)
