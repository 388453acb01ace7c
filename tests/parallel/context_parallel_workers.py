"""Rank functions for the context-parallel tests (an importable module, as `spawn` needs)."""

from __future__ import annotations

import torch

from modm.config.schema import ModelSpec
from modm.models.loading import load_pipeline
from modm.parallel import (
    ParallelConfig,
    ParallelPipeline,
    SequenceSplitError,
    UnsupportedModelError,
    init_parallel,
)

STEPS = 3


def _inputs(size: int) -> dict:
    return dict(
        prompt="a red bicycle",
        num_inference_steps=STEPS,
        height=size,
        width=size,
        guidance_scale=3.5,
        max_sequence_length=32,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="latent",
    )


def flux_suite(rank: int, world_size: int, init_method: str, source: str) -> dict:
    """One device, then ulysses on all ranks (and again after remove()); ring's and a bad size's refusals."""
    pipe = load_pipeline(ModelSpec(source=source, device="cpu"), device=torch.device("cpu"))
    pipe.set_progress_bar_config(disable=True)
    results = {"reference": pipe(**_inputs(64)).images.numpy()}
    ring = ParallelConfig(method="ring", world_size=world_size)
    ctx = init_parallel(ring, rank=rank, world_size=world_size, init_method=init_method, timeout_s=60)
    try:
        ParallelPipeline(pipe, ctx)
    except UnsupportedModelError as refused:
        results["ring_refusal"] = str(refused)
    ctx.config = ParallelConfig(method="ulysses", world_size=world_size)  # same ranks, same process group
    parallel = ParallelPipeline(pipe, ctx)
    results["ulysses"] = parallel(**_inputs(64)).images.numpy()
    try:
        parallel(**_inputs(48))  # 48 px: 3 x 3 packed latent tokens, which 2 ranks cannot share equally
    except SequenceSplitError as refused:
        results["split_refusal"] = str(refused)
    parallel.remove()
    results["after_remove"] = pipe(**_inputs(64)).images.numpy()
    ctx.destroy()
    return results
