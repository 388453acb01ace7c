"""The Ray path: a ParallelActorGroup of 2 CPU actors serving a saved tiny SDXL pipeline (ModelSpec loader)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from deployments.actor_group import ActorGroupUnhealthy, ParallelActorGroup  # noqa: E402
from modm.config.schema import ModelSpec  # noqa: E402
from modm.models.loading import load_pipeline  # noqa: E402
from modm.parallel import ParallelConfig, PatchSplitError, RendezvousError  # noqa: E402
from tiny import tiny_sdxl_pipeline  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

STEPS = 4
REQUEST = dict(
    prompt="a lighthouse", num_inference_steps=STEPS, height=64, width=64, guidance_scale=5.0, output_type="np"
)


@pytest.fixture(scope="module")
def model_spec(tmp_path_factory, clip_tokenizer) -> ModelSpec:
    directory = tmp_path_factory.mktemp("tiny-sdxl")
    tiny_sdxl_pipeline(clip_tokenizer).save_pretrained(directory)
    return ModelSpec(source=str(directory), device="cpu")


def _reference(spec: ModelSpec, seed: int) -> np.ndarray:
    pipe = load_pipeline(spec, device=torch.device("cpu"))
    return pipe(**REQUEST, generator=torch.Generator("cpu").manual_seed(seed)).images


def test_actor_group_serves_exact_distrifusion_and_notices_a_dead_worker(ray_cluster, model_spec):
    cfg = ParallelConfig(method="distrifusion", world_size=2, warmup_steps=STEPS, timeout_s=60)
    group = ParallelActorGroup(cfg, model_spec, cpus_per_rank=1, start_timeout_s=150, request_timeout_s=60)
    try:
        group.start()
        images = group.generate(REQUEST, seed=3)
        assert np.abs(images - _reference(model_spec, seed=3)).max() <= 1e-5
        # Bad input reaches every rank, which all raise the same clear error before any collective.
        with pytest.raises(PatchSplitError, match="cannot split"):
            group.generate({**REQUEST, "height": 48, "width": 48}, seed=0)
        group.check_health()
        ray.kill(group.workers[1])
        with pytest.raises(ActorGroupUnhealthy, match="rank 1 of 2"):
            group.check_health()
        # A dead rank breaks the process group for good: no more work is sent to the survivor.
        with pytest.raises(ActorGroupUnhealthy, match="rank 1 of 2 is dead .* being replaced"):
            group.submit(REQUEST, seed=0)
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


def test_a_stopped_request_ends_on_every_rank_in_the_given_placement_group(ray_cluster, model_spec):
    """Issue 13: the ranks go into the placement group they are given (a Serve replica's, bundle 0 being the
    replica's own), and stop(request_id) ends a long generation at its next step on both ranks, after which the
    group serves the next request exactly (no rank was left behind in a collective)."""
    from ray.util.placement_group import placement_group, remove_placement_group

    from deployments.actor_group import ParallelGenerationStopped

    pg = placement_group([{"CPU": 0.1}, {"CPU": 1}, {"CPU": 1}], strategy="PACK")
    ray.get(pg.ready(), timeout=60)
    cfg = ParallelConfig(method="distrifusion", world_size=2, warmup_steps=STEPS, timeout_s=60)
    group = ParallelActorGroup(
        cfg, model_spec, cpus_per_rank=1, start_timeout_s=150, request_timeout_s=60, placement_group=pg, first_bundle=1
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
        ray.get(group.submit(REQUEST, seed=0), timeout=60)  # warm: the long request's time is all denoising
        started = time.monotonic()
        long = group.submit({**REQUEST, "num_inference_steps": 400}, seed=1, request_id="long")
        time.sleep(1.0)
        group.stop("long")
        with pytest.raises(ParallelGenerationStopped, match="on all 2 ranks"):
            ray.get(long, timeout=60)
        stopped_after_s = time.monotonic() - started
        images = group.generate(REQUEST, seed=3)
        assert np.abs(images - _reference(model_spec, seed=3)).max() <= 1e-5
        print(f"\nstopped a 400-step request after {stopped_after_s:.1f}s")  # it raised: it did not finish
    finally:
        group.shutdown()
        remove_placement_group(pg)
