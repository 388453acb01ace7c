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
REQUEST = dict(prompt="a lighthouse", num_inference_steps=STEPS, height=64, width=64, guidance_scale=5.0,
               output_type="np")


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
