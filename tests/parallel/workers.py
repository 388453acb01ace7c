"""Functions run on every spawned rank (they must live in an importable module for `spawn`)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from modm.parallel import (
    ParallelConfig,
    ParallelPipeline,
    PatchSplitError,
    init_parallel,
)
from tiny import sd3_inputs, sdxl_inputs, tiny_sd3_pipeline, tiny_sdxl_pipeline

STEPS = 6


def _run(pipe, cfg: ParallelConfig, rank: int, world_size: int, init_method: str, inputs: dict):
    ctx = init_parallel(cfg, rank=rank, world_size=world_size, init_method=init_method, timeout_s=60)
    parallel = ParallelPipeline(pipe, ctx)
    try:
        return parallel(**inputs).images.numpy(), ctx
    finally:
        parallel.remove()


def _suite(pipe, inputs_fn, configs: dict[str, dict], rank: int, world_size: int, init_method: str) -> dict:
    """Reference first (plain pipeline, single device), then every named config on the shared process group."""
    results = {"reference": pipe(**inputs_fn()).images.numpy()}
    for name, overrides in configs.items():
        cfg = ParallelConfig(world_size=world_size, **overrides)
        results[name], _ = _run(pipe, cfg, rank, world_size, init_method, inputs_fn())
    return results


def _teardown() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def distrifusion_unet(rank: int, world_size: int, init_method: str, tokenizer) -> dict:
    pipe = tiny_sdxl_pipeline(tokenizer)
    inputs = lambda: sdxl_inputs(steps=STEPS)  # noqa: E731
    results = _suite(
        pipe,
        inputs,
        {
            "sync": dict(method="distrifusion", warmup_steps=STEPS),
            "always_sync": dict(method="distrifusion", warmup_steps=0, always_synchronous=True),
            "naive": dict(method="naive_patch"),
            "async_corrected": dict(method="distrifusion", warmup_steps=1, groupnorm_mode="corrected_async"),
            "async_stale": dict(method="distrifusion", warmup_steps=1, groupnorm_mode="stale"),
            "async_sync_gn": dict(method="distrifusion", warmup_steps=1, groupnorm_mode="sync", comm_checkpoint=3),
            "async_separate": dict(method="distrifusion", warmup_steps=1, groupnorm_mode="separate"),
            "cfg_split": dict(method="distrifusion", cfg_split=True, warmup_steps=0),
        },
        rank,
        world_size,
        init_method,
    )
    # A height whose smallest feature map (48 px -> latent 6 -> 3 rows) 2 ranks cannot split: clear error, no hang.
    cfg = ParallelConfig(method="distrifusion", world_size=world_size)
    ctx = init_parallel(cfg, rank=rank, world_size=world_size, init_method=init_method, timeout_s=60)
    parallel = ParallelPipeline(pipe, ctx)
    try:
        parallel(**{**sdxl_inputs(steps=2), "height": 48, "width": 48})
        results["bad_height"] = None
    except PatchSplitError as exc:
        results["bad_height"] = str(exc)
    finally:
        parallel.remove()
    return results


def distrifusion_sd3(rank: int, world_size: int, init_method: str, tokenizer) -> dict:
    pipe = tiny_sd3_pipeline(tokenizer)
    inputs = lambda: sd3_inputs(steps=STEPS)  # noqa: E731
    return _suite(
        pipe,
        inputs,
        {
            "sync": dict(method="distrifusion", warmup_steps=STEPS),
            "naive": dict(method="naive_patch"),
            "async": dict(method="distrifusion", warmup_steps=1),
            "cfg_split": dict(method="distrifusion", cfg_split=True),
        },
        rank,
        world_size,
        init_method,
    )


def asyncdiff_models(rank: int, world_size: int, init_method: str, tokenizer) -> dict:
    """Stride 1 on 2 ranks, for the UNet and the SD3 transformer."""
    out = {}
    for family, pipe, inputs in (
        ("unet", tiny_sdxl_pipeline(tokenizer), lambda: sdxl_inputs(steps=STEPS)),
        ("sd3", tiny_sd3_pipeline(tokenizer), lambda: sd3_inputs(steps=STEPS)),
    ):
        results = _suite(
            pipe,
            inputs,
            {
                "exact": dict(method="asyncdiff", model_n=2, warmup_steps=STEPS),
                "async": dict(method="asyncdiff", model_n=2, warmup_steps=2),
                "async_shift": dict(method="asyncdiff", model_n=2, warmup_steps=2, time_shift=True),
            },
            rank,
            world_size,
            init_method,
        )
        out.update({f"{family}_{k}": v for k, v in results.items()})
        # Past the warm-up each rank must run only its own component.
        ctx = init_parallel(
            ParallelConfig(method="asyncdiff", world_size=world_size, model_n=2, warmup_steps=2),
            rank=rank,
            world_size=world_size,
            init_method=init_method,
        )
        parallel = ParallelPipeline(pipe, ctx)
        parallel(**inputs())
        runner = parallel.parallel
        own = [b - a for a, b in runner.components][rank]
        out[f"{family}_units"] = (runner.units_computed, 2 * len(runner.unit_keys) + (STEPS - 2) * own)
        parallel.remove()
    return out


def asyncdiff_stride2(rank: int, world_size: int, init_method: str, tokenizer) -> dict:
    """Stride 2 (model_n=2 on 3 ranks), UNet."""
    pipe = tiny_sdxl_pipeline(tokenizer)
    inputs = lambda: sdxl_inputs(steps=STEPS)  # noqa: E731
    return _suite(
        pipe,
        inputs,
        {
            "exact": dict(method="asyncdiff", model_n=2, stride=2, warmup_steps=STEPS),
            "async": dict(method="asyncdiff", model_n=2, stride=2, warmup_steps=2),
        },
        rank,
        world_size,
        init_method,
    )


def collective_stop(rank: int, world_size: int, init_method: str, tokenizer) -> dict:
    """A DiffusionGenerator on the parallel pipeline, as each actor-group rank runs it: only rank 1 sees a stop,
    after its 3rd step; both ranks must leave after that step, and the group then serves the next call exactly."""
    from modm.config import ModelSpec
    from modm.generation import DiffusionGenerator, GenerationInterrupted, GenerationRequest
    from modm.parallel.pipeline import CollectiveStop

    pipe = tiny_sdxl_pipeline(tokenizer)
    spec = ModelSpec(source="tiny-sdxl", device="cpu", guidance_scale=5.0)
    request = GenerationRequest("a lighthouse", 64, 64, STEPS, seed=0)
    reference = np.asarray(DiffusionGenerator(pipe, spec, "large").txt2img(request), dtype=np.int16)
    cfg = ParallelConfig(method="distrifusion", world_size=world_size, warmup_steps=STEPS)
    ctx = init_parallel(cfg, rank=rank, world_size=world_size, init_method=init_method, timeout_s=60)
    parallel = ParallelPipeline(pipe, ctx)
    generator = DiffusionGenerator(parallel.pipe, spec, "large", row_stripes=world_size)
    stop = CollectiveStop(ctx, lambda: rank == 1 and stop.steps_run >= 3)
    out: dict = {"size_multiple": generator.size_multiple}
    try:
        with parallel.calling():
            generator.txt2img(replace(request, steps=50), stop)
    except GenerationInterrupted as stopped:
        out["stopped"] = (type(stopped).__name__, stopped.steps_run, str(stopped))
    with parallel.calling():
        image = generator.txt2img(request, CollectiveStop(ctx, lambda: False))
    out["max_diff_to_one_device"] = int(np.abs(np.asarray(image, dtype=np.int16) - reference).max())
    parallel.remove()
    return out


def two_rank_suites(rank: int, world_size: int, init_method: str, tokenizer) -> dict:
    """Everything that runs on 2 ranks, on one process group (spawning and importing dominate the test time)."""
    try:
        return {
            "distrifusion_unet": distrifusion_unet(rank, world_size, init_method, tokenizer),
            "distrifusion_sd3": distrifusion_sd3(rank, world_size, init_method, tokenizer),
            "asyncdiff": asyncdiff_models(rank, world_size, init_method, tokenizer),
            "collective_stop": collective_stop(rank, world_size, init_method, tokenizer),
            "num_threads": torch.get_num_threads(),
        }
    finally:
        _teardown()


def three_rank_suites(rank: int, world_size: int, init_method: str, tokenizer) -> dict:
    try:
        return {"asyncdiff_stride2": asyncdiff_stride2(rank, world_size, init_method, tokenizer)}
    finally:
        _teardown()


def four_rank_suites(rank: int, world_size: int, init_method: str, tokenizer) -> dict:
    """CFG split over two halves of 2 ranks each: the patch exchange runs on per-half subgroups."""
    try:
        pipe = tiny_sdxl_pipeline(tokenizer)
        inputs = lambda: sdxl_inputs(steps=STEPS)  # noqa: E731
        return {
            "cfg_split_patches": _suite(
                pipe,
                inputs,
                {
                    "sync": dict(method="distrifusion", cfg_split=True, warmup_steps=STEPS),
                    "async": dict(method="distrifusion", cfg_split=True, warmup_steps=1),
                    "naive": dict(method="naive_patch", cfg_split=True),
                },
                rank,
                world_size,
                init_method,
            )
        }
    finally:
        _teardown()
