"""`AsyncDiffModel`: asynchronous denoising (model parallelism across steps) on an unmodified diffusers denoiser.

The denoiser's blocks ("units", see `split.denoiser_units`) are swapped for `AsyncUnit`s which either run the block
or return its cached output. Caches live in one flat buffer per component, owned by this object, and are broadcast
from their owners at step starts (the only collectives besides the prediction broadcast): whole buffers for a
U-Net (skip connections read every block's output), only the component-boundary blocks' outputs for a DiT. Glue
code (time embedding, final norm) runs on every rank, as in the original.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from modm.parallel.asyncdiff.split import (
    StepPlan,
    TimestepChoice,
    UnitTimer,
    denoiser_units,
    only_boundaries_are_read,
    owner_of,
    step_plan,
)
from modm.parallel.asyncdiff.structure import OutputStructure, describe, flatten_into, rebuild
from modm.parallel.config import ParallelMethod
from modm.parallel.context import ParallelContext
from modm.parallel.errors import ParallelConfigError
from modm.parallel.partition import balanced_contiguous_split

__all__ = ["AsyncDiffModel", "AsyncUnit"]

logger = logging.getLogger(__name__)


def _tensors(value: Any):
    """Every tensor in a nested block output, depth-first."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)


class AsyncUnit(nn.Module):
    """One block: computes it, or returns its cached output, as the owning AsyncDiffModel decides."""

    def __init__(self, module: nn.Module, index: int, runner: "AsyncDiffModel"):
        super().__init__()
        self.module = module
        self.index = index
        # A plain attribute would register the runner's model as a submodule (a cycle); keep it out of the tree.
        object.__setattr__(self, "_runner", runner)

    def forward(self, *args, **kwargs):
        return self._runner._run_unit(self, args, kwargs)

    def __getattr__(self, name: str):
        # Blocks are inspected by their callers (e.g. the UNet reads `mid_block.has_cross_attention` to decide what
        # to pass), so attributes the wrapper lacks are read from the wrapped block.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("module"), name)


class AsyncDiffModel:
    """AsyncDiff for a UNet2DConditionModel or SD3Transformer2DModel (stride 1 or 2, warm-up, time shift)."""

    def __init__(
        self,
        model: nn.Module,
        ctx: ParallelContext,
        *,
        timesteps: Callable[[], torch.Tensor] | None = None,
        unit_costs: list[float] | None = None,
    ):
        cfg = ctx.config
        if cfg.method is not ParallelMethod.ASYNCDIFF:
            raise ParallelConfigError(f"AsyncDiffModel needs method asyncdiff, got {cfg.method.value}")
        if cfg.stride == 2 and timesteps is None:
            raise ParallelConfigError("stride 2 needs `timesteps` (the scheduler's) to compute one step ahead")
        self.model = model
        self.ctx = ctx
        self.timesteps = timesteps
        units = denoiser_units(model)
        if len(units) < cfg.model_n:
            raise ParallelConfigError(f"the model has {len(units)} blocks, fewer than model_n={cfg.model_n}")
        if unit_costs is not None and len(unit_costs) != len(units):
            raise ParallelConfigError(f"unit_costs has {len(unit_costs)} entries for {len(units)} blocks")
        self.unit_keys = [u.key for u in units]
        # DiT stacks: broadcast only the last block of each component (what the next component reads).
        self.boundaries_only = only_boundaries_are_read(model)
        self.unit_costs = list(unit_costs) if unit_costs is not None else None
        self.components: list[tuple[int, int]] | None = None
        self._component_of: list[int] = []
        synchronize = torch.cuda.synchronize if ctx.device.type == "cuda" else None
        self._timer = UnitTimer(len(units), synchronize=synchronize)
        self._swapped = []
        for i, unit in enumerate(units):
            # setattr with the index as name is how ModuleList stores its items, so one path serves both.
            original = getattr(unit.parent, unit.name)
            self._swapped.append((unit.parent, unit.name, original))
            setattr(unit.parent, unit.name, AsyncUnit(original, i, self))
        if self.unit_costs is not None:
            self._set_components(self.unit_costs)
        self._signature = inspect.signature(model.forward)
        self._handles = [
            model.register_forward_pre_hook(self._before_forward, with_kwargs=True),
            model.register_forward_hook(self._after_forward),
        ]
        self.step = 0
        self.units_computed = 0  # blocks this rank ran in the current call (observability)
        self.cache_bytes_broadcast = 0  # payload of this call's cache broadcasts
        self.prediction_bytes_broadcast = 0  # ... and of its prediction broadcasts
        self._plan: StepPlan | None = None
        self._previous_timestep: Any = None
        self._structures: list[OutputStructure | None] = [None] * len(units)
        self._slots: list[tuple[int, int]] = []  # (start, end) of each unit inside its component's buffer
        self._buffers: list[torch.Tensor] | None = None
        self._pending: dict[int, Any] = {}  # outputs of the first caching step, before buffers exist

    @property
    def bytes_broadcast(self) -> int:
        """Bytes this call broadcast (caches and predictions), the AsyncDiff traffic of one generation."""
        return self.cache_bytes_broadcast + self.prediction_bytes_broadcast

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def begin_call(self) -> None:
        self.step = 0
        self.units_computed = 0
        self.cache_bytes_broadcast = self.prediction_bytes_broadcast = 0
        self._previous_timestep = None

    def end_call(self) -> None:
        self._plan = None  # an exception mid-step must not leave a plan behind for direct block calls

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        for parent, name, original in reversed(self._swapped):
            setattr(parent, name, original)
        self._swapped.clear()

    def _set_components(self, costs: list[float]) -> None:
        self.unit_costs = list(costs)
        self.components = balanced_contiguous_split(costs, self.ctx.config.model_n)
        self._component_of = [c for c, (a, b) in enumerate(self.components) for _ in range(a, b)]
        logger.info(
            "AsyncDiff components: %s", [[self.unit_keys[a], self.unit_keys[b - 1]] for a, b in self.components]
        )

    # -- units ----------------------------------------------------------------------------------------------------
    def _run_unit(self, unit: AsyncUnit, args, kwargs):
        plan = self._plan
        if plan is None:  # called outside a denoiser forward (e.g. a direct block call): plain module
            return unit.module(*args, **kwargs)
        if plan.compute_all or self._component_of[unit.index] in plan.compute:
            profiling = self.components is None
            if profiling:
                self._timer.start(unit.index)
            output = unit.module(*args, **kwargs)
            self.units_computed += 1
            if profiling:
                self._timer.stop(unit.index)
            if plan.store_cache:
                self._store(unit.index, output)
            return output
        return rebuild(self._structures[unit.index], self._unit_view(unit.index))

    def _unit_view(self, index: int) -> torch.Tensor:
        start, end = self._slots[index]
        return self._buffers[self._component_of[index]][start:end]

    def _store(self, index: int, output: Any) -> None:
        if self._buffers is None or self._structures[index] is None:
            # First cache of this run: every rank computes every unit here (last warm-up step), so the layout is
            # identical on all ranks. Buffers are (re)built once all units have reported.
            self._structures[index] = describe(output)
            self._pending[index] = output
            return
        flatten_into(output, self._unit_view(index))

    def _allocate_from_pending(self, device: torch.device) -> None:
        sizes = [[] for _ in self.components]
        self._slots = [(0, 0)] * len(self.unit_keys)
        for index, structure in enumerate(self._structures):
            comp = self._component_of[index]
            start = sum(sizes[comp])
            sizes[comp].append(structure.numel)
            self._slots[index] = (start, start + structure.numel)
        dtype = next(_tensors(next(iter(self._pending.values())))).dtype
        self._buffers = [torch.empty(sum(s), dtype=dtype, device=device) for s in sizes]
        for index, output in self._pending.items():
            flatten_into(output, self._unit_view(index))
        self._pending = {}

    # -- model hooks ----------------------------------------------------------------------------------------------
    def _before_forward(self, module, args, kwargs):
        cfg = self.ctx.config
        bound = self._signature.bind(*args, **kwargs)
        timestep = bound.arguments.get("timestep")
        plan = step_plan(
            self.step,
            rank=self.ctx.rank,
            warmup_steps=cfg.warmup_steps,
            model_n=cfg.model_n,
            stride=cfg.stride,
            time_shift=cfg.time_shift,
        )
        if plan.store_cache and plan.compute_all:
            # A new run of caches: drop the old layout (resolution or batch may have changed).
            self._buffers, self._structures, self._pending = None, [None] * len(self.unit_keys), {}
        if plan.sync_caches_first:
            self._broadcast_caches(plan)
        self._plan = plan
        bound.arguments["timestep"] = self._choose_timestep(plan.timestep, timestep)
        self._previous_timestep = timestep
        return bound.args, bound.kwargs

    def _choose_timestep(self, choice: TimestepChoice, current):
        if choice is TimestepChoice.PREVIOUS and self._previous_timestep is not None:
            return self._previous_timestep
        if choice is TimestepChoice.NEXT:
            schedule = self.timesteps().to(torch.as_tensor(current).device)
            value = torch.as_tensor(current).reshape(-1)[0]
            matches = (schedule == value).nonzero().flatten()
            if matches.numel() == 0:
                raise ParallelConfigError(f"timestep {value.item()} is not in the scheduler's timesteps")
            position = int(matches[-1])
            if position + 1 < len(schedule):
                nxt = schedule[position + 1]
                return torch.full_like(current, nxt.item()) if isinstance(current, torch.Tensor) else nxt.item()
        return current

    def _broadcast_caches(self, plan: StepPlan) -> None:
        works = []
        for component, tensor in enumerate(self._cache_payload(plan)):
            if tensor is None:
                continue
            self.cache_bytes_broadcast += tensor.numel() * tensor.element_size()
            works.append(dist.broadcast(tensor, src=owner_of(component), group=self.ctx.world_group, async_op=True))
        for work in works:
            work.wait()

    def _cache_payload(self, plan: StepPlan) -> list[torch.Tensor | None]:
        """Per component, the part of its cache the other ranks read this step (None: nothing)."""
        if not self.boundaries_only:
            return list(self._buffers)
        last = len(self._buffers) - 1
        payload = []
        for component, (_, end) in enumerate(self.components):
            # The last component's output is read only when no prediction broadcast follows (stride 2's second
            # step, where every rank returns the cached prediction).
            if component == last and plan.output_source is not None:
                payload.append(None)
            else:
                payload.append(self._unit_view(end - 1))  # a contiguous slice of the flat buffer
        return payload

    def _after_forward(self, module, args, output):
        plan, self._plan = self._plan, None
        if self.components is None:
            self._decide_components()
        if plan.store_cache and plan.compute_all:
            self._allocate_from_pending(self.ctx.device)
        self.step += 1
        if plan.output_source is None:
            return output
        sample = output[0] if isinstance(output, tuple) else output.sample
        sample = sample.contiguous()
        self.prediction_bytes_broadcast += sample.numel() * sample.element_size()
        dist.broadcast(sample, src=plan.output_source, group=self.ctx.world_group)
        if isinstance(output, tuple):
            return (sample,) + tuple(output[1:])
        output.sample = sample
        return output

    def _decide_components(self) -> None:
        """Balance by rank 0's measured unit times (broadcast, so every rank derives the same split)."""
        costs = torch.tensor(self._timer.seconds, dtype=torch.float64, device=self.ctx.device)
        if self.ctx.world_size > 1:
            dist.broadcast(costs, src=0, group=self.ctx.world_group)
        self._set_components(costs.tolist())
