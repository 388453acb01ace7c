"""Splitting a denoiser into AsyncDiff components: which blocks ("units") exist, what they cost, who runs what.

Units are the denoiser's blocks in execution order. Components are contiguous runs of units balanced by measured
cost (`balanced_contiguous_split`) -- no per-model-id tables, so any checkpoint of a supported class works.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum
from typing import Callable

from diffusers import SD3Transformer2DModel, UNet2DConditionModel
from torch import nn

from modm.parallel.errors import ParallelConfigError, UnsupportedModelError

__all__ = [
    "Unit",
    "denoiser_units",
    "only_boundaries_are_read",
    "UnitTimer",
    "TimestepChoice",
    "StepPlan",
    "step_plan",
    "owner_of",
]


@dataclass(frozen=True)
class Unit:
    """One block of the denoiser that AsyncDiff can compute or replace by its cached output."""

    key: str  # module path, e.g. "down_blocks.0.attentions.1"
    parent: nn.Module
    name: str  # attribute (or ModuleList index) under `parent`


def _children(parent: nn.Module, prefix: str, names) -> list[Unit]:
    return [Unit(f"{prefix}.{n}", parent, str(n)) for n in names]


def _block_units(block: nn.Module, prefix: str) -> list[Unit]:
    """Resnets and attentions in the order the diffusers block runs them, then its down/upsamplers."""
    units: list[Unit] = []
    resnets = getattr(block, "resnets", None) or []
    attentions = getattr(block, "attentions", None) or []
    for i in range(len(resnets)):
        units += _children(block.resnets, f"{prefix}.resnets", [i])
        if i < len(attentions):
            units += _children(block.attentions, f"{prefix}.attentions", [i])
    for sampler in ("downsamplers", "upsamplers"):
        samplers = getattr(block, sampler, None)
        if samplers:
            units += _children(samplers, f"{prefix}.{sampler}", range(len(samplers)))
    return units


def denoiser_units(model: nn.Module) -> list[Unit]:
    """The blocks of a UNet2DConditionModel or SD3Transformer2DModel in execution order."""
    if isinstance(model, UNet2DConditionModel):
        units = [Unit("conv_in", model, "conv_in")]
        for i, block in enumerate(model.down_blocks):
            units += _block_units(block, f"down_blocks.{i}")
        units.append(Unit("mid_block", model, "mid_block"))
        for i, block in enumerate(model.up_blocks):
            units += _block_units(block, f"up_blocks.{i}")
        units.append(Unit("conv_out", model, "conv_out"))
        return units
    if isinstance(model, SD3Transformer2DModel):
        return _children(model.transformer_blocks, "transformer_blocks", range(len(model.transformer_blocks)))
    raise UnsupportedModelError(
        f"AsyncDiff supports UNet2DConditionModel and SD3Transformer2DModel, got {type(model).__name__}"
    )


def only_boundaries_are_read(model: nn.Module) -> bool:
    """Whether a component reads no cached output but that of the block just before it.

    True for a plain stack of transformer blocks (SD3's `transformer_blocks`: each block takes only its predecessor's
    output plus glue every rank computes), so only component-boundary outputs need broadcasting, as the original's
    SD3 path does (`comm_index`). False for a U-Net, whose up blocks read the down blocks' outputs (skips).
    """
    return isinstance(model, SD3Transformer2DModel)


class UnitTimer:
    """Wall-clock cost per unit, accumulated while the units run (the profiler behind the balanced split)."""

    def __init__(self, num_units: int, synchronize: Callable[[], None] | None = None):
        self.seconds = [0.0] * num_units
        self._started: dict[int, float] = {}
        self._synchronize = synchronize  # CUDA kernels are asynchronous: wait for them around each unit

    def start(self, index: int) -> None:
        if self._synchronize:
            self._synchronize()
        self._started[index] = time.perf_counter()

    def stop(self, index: int) -> None:
        if self._synchronize:
            self._synchronize()
        self.seconds[index] += time.perf_counter() - self._started.pop(index)


def owner_of(component: int) -> int:
    """Rank that owns (computes and broadcasts) a component: rank c owns component c."""
    return component


class TimestepChoice(str, Enum):
    CURRENT = "current"  # the timestep the pipeline passed
    PREVIOUS = "previous"  # time shift: the previous (noisier) step's timestep
    NEXT = "next"  # stride 2: compute one step ahead (the current one on the last step)


@dataclass(frozen=True)
class StepPlan:
    """What one rank does at one denoising step."""

    compute_all: bool  # warm-up: run the whole model
    compute: frozenset[int]  # components to compute (when not compute_all); others return caches
    store_cache: bool  # write computed outputs into the component caches
    sync_caches_first: bool  # broadcast every component cache from its owner before the forward
    output_source: int | None  # rank whose prediction everyone takes (None: all already agree)
    timestep: TimestepChoice


def step_plan(step: int, *, rank: int, warmup_steps: int, model_n: int, stride: int, time_shift: bool) -> StepPlan:
    """AsyncDiff's schedule (czg1225/AsyncDiff async_sd.py), as a pure function.

    Stride 1 (world = model_n): past the warm-up, rank r computes component r from the previous step's outputs of
    the components before it; caches are broadcast at each step start; the prediction comes from rank model_n-1.
    Stride 2 (world = model_n + 1): steps come in pairs. On the first, ranks < model_n compute their component one
    timestep ahead and cache it, while the extra rank computes the last component for the current timestep (the
    prediction). On the second, caches are broadcast and nobody computes: the prediction is the cached last
    component computed ahead by rank model_n-1.
    """
    if stride not in (1, 2):
        raise ParallelConfigError(f"stride must be 1 or 2, got {stride}")
    if not 0 <= rank < model_n + stride - 1:
        raise ParallelConfigError(f"rank {rank} is outside world_size {model_n + stride - 1}")
    if step < warmup_steps:
        return StepPlan(True, frozenset(), step == warmup_steps - 1, False, None, TimestepChoice.CURRENT)
    if stride == 1:
        shift = TimestepChoice.PREVIOUS if time_shift else TimestepChoice.CURRENT
        return StepPlan(False, frozenset({rank}), True, True, owner_of(model_n - 1), shift)
    if (step - warmup_steps) % 2 == 1:
        return StepPlan(False, frozenset(), False, True, None, TimestepChoice.CURRENT)
    if rank < model_n:
        ahead = TimestepChoice.CURRENT if time_shift else TimestepChoice.NEXT
        return StepPlan(False, frozenset({rank}), True, False, model_n, ahead)
    return StepPlan(False, frozenset({model_n - 1}), False, False, model_n, TimestepChoice.CURRENT)
