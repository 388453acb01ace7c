"""Run a standard diffusers pipeline with a parallel denoiser; generation code stays diffusers' own.

Every rank runs the same pipeline call (text encoders, scheduler and VAE are replicated and cheap next to the
denoiser); the parallel denoiser returns the full prediction on every rank, so every rank returns the same image.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable, Protocol

import torch
import torch.distributed as dist
from diffusers import SD3Transformer2DModel, UNet2DConditionModel
from torch import nn

from modm.generation.steps import GenerationInterrupted, StepControl
from modm.parallel.asyncdiff import AsyncDiffModel
from modm.parallel.config import ParallelMethod
from modm.parallel.context import ParallelContext
from modm.parallel.context_parallel import ContextParallelDenoiser
from modm.parallel.distrifusion import wrap_naive_patch, wrap_sd3_transformer, wrap_unet
from modm.parallel.errors import ParallelConfigError, UnsupportedModelError

__all__ = [
    "CollectiveStop",
    "ParallelDenoiser",
    "ParallelGenerationStopped",
    "ParallelPipeline",
    "parallelize_denoiser",
]


class ParallelGenerationStopped(GenerationInterrupted):
    """A stop was requested: every rank left the denoising loop after the same step."""


class ParallelDenoiser(Protocol):
    """What every parallel method attaches to a denoiser."""

    def begin_call(self) -> None: ...
    def end_call(self) -> None: ...
    def remove(self) -> None: ...


class _Unchanged:
    """method=none: the denoiser runs as is."""

    def begin_call(self) -> None:
        pass

    def end_call(self) -> None:
        pass

    def remove(self) -> None:
        pass


def parallelize_denoiser(
    model: nn.Module, ctx: ParallelContext, timesteps: Callable[[], torch.Tensor] | None = None
) -> ParallelDenoiser:
    """Attach `ctx.config.method` to the denoiser, in place: the patch methods and AsyncDiff take a
    UNet2DConditionModel or SD3Transformer2DModel, ulysses and ring a transformer with a diffusers `_cp_plan` (FLUX).

    `timesteps` returns the scheduler's current timesteps (AsyncDiff stride 2 runs components one step ahead).
    """
    method = ctx.config.method
    if method is ParallelMethod.NONE:
        return _Unchanged()
    if ctx.config.is_context_parallel:
        return ContextParallelDenoiser(model, ctx)
    if not isinstance(model, (UNet2DConditionModel, SD3Transformer2DModel)):
        raise UnsupportedModelError(
            f"parallel inference supports UNet2DConditionModel and SD3Transformer2DModel, got {type(model).__name__}"
        )
    if method is ParallelMethod.NAIVE_PATCH:
        return wrap_naive_patch(model, ctx)
    if method is ParallelMethod.DISTRIFUSION:
        return wrap_unet(model, ctx) if isinstance(model, UNet2DConditionModel) else wrap_sd3_transformer(model, ctx)
    if method is ParallelMethod.ASYNCDIFF:
        return AsyncDiffModel(model, ctx, timesteps=timesteps)
    raise ParallelConfigError(f"unknown parallel method {method!r}")


class ParallelPipeline:
    """A diffusers text-to-image pipeline (SD, SDXL, SD3; FLUX with ulysses or ring) whose denoiser runs on all
    ranks of `ctx`.

    Call it exactly like the pipeline. With more than one rank, pass a seeded `generator` (or `latents`) so all ranks
    start from the same noise.
    """

    def __init__(self, pipe, ctx: ParallelContext):
        denoiser_name = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
        denoiser = getattr(pipe, denoiser_name, None)
        if denoiser is None:
            raise UnsupportedModelError(f"{type(pipe).__name__} has neither a unet nor a transformer")
        self.pipe = pipe.to(ctx.device)
        self.ctx = ctx
        self.denoiser_name = denoiser_name
        self.parallel = parallelize_denoiser(denoiser, ctx, timesteps=lambda: self.pipe.scheduler.timesteps)

    def __call__(self, *args, **kwargs) -> Any:
        """To stop it part-way, pass `callback_on_step_end=CollectiveStop(ctx, requested).on_step_end` (the ranks
        agree on the step)."""
        if self.ctx.world_size > 1 and kwargs.get("generator") is None and kwargs.get("latents") is None:
            raise ParallelConfigError(
                "pass a seeded `generator` (or `latents`) so every rank starts from the same noise"
            )
        with self.calling():
            return self.pipe(*args, **kwargs)

    @contextmanager
    def calling(self) -> Iterator[None]:
        """Around one call of `self.pipe` made by other code (a DiffusionGenerator holding it): the parallel denoiser
        resets its per-call state."""
        self.parallel.begin_call()
        try:
            yield
        finally:
            self.parallel.end_call()

    def remove(self) -> None:
        """Give the pipeline its original denoiser back."""
        self.parallel.remove()


class CollectiveStop(StepControl):
    """Stops a parallel generation at its next denoising step, at the same step on every rank.

    Each rank asks `requested()` (its own view of the stop signal, e.g. an event set by another thread) after every
    step, and the ranks agree by a MAX all-reduce of one number over the world group: if any rank saw the signal,
    all of them raise ParallelGenerationStopped after the same step, so no rank is left waiting in a collective for
    peers that have gone. One tiny all-reduce per step, next to a denoiser step's exchanges.
    """

    def __init__(self, ctx: ParallelContext, requested: Callable[[], bool]):
        super().__init__()
        self.ctx = ctx
        self.requested = requested

    def should_stop(self) -> bool:
        seen = self.stop_event.is_set() or self.requested()
        flag = torch.tensor([1.0 if seen else 0.0], device=self.ctx.device)
        if self.ctx.world_group is not None:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.ctx.world_group)
        return flag.item() > 0

    def interrupted(self) -> ParallelGenerationStopped:
        return ParallelGenerationStopped(
            f"stopped after denoising step {self.steps_run} on all {self.ctx.world_size} ranks",
            steps_run=self.steps_run,
        )
