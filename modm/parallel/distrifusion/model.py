"""`PatchParallelModel`: the model-level part of patch parallelism, attached to an unmodified diffusers model.

Forward hooks on the denoiser (public `nn.Module` hooks, so the pipeline keeps calling its own `unet`/`transformer`):
* before the forward: validate the resolution on the first step, take this rank's CFG half of every batched input
  (`cfg_split`), and for the naive baseline cut the latent to this rank's rows;
* after the forward: all_gather every rank's output stripe over the world and rebuild the full noise prediction, so
  every rank runs the unmodified scheduler on identical data; then advance the shared step counter.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from modm.parallel.context import ParallelContext
from modm.parallel.distrifusion.base import PatchStepState
from modm.parallel.distrifusion.comm import CommManager
from modm.parallel.errors import ParallelConfigError
from modm.parallel.partition import check_patch_divisible, row_range

__all__ = ["PatchParallelModel", "take_batch_half"]

logger = logging.getLogger(__name__)


def take_batch_half(value: Any, batch: int, half: int) -> Any:
    """Slice every tensor whose first dimension is `batch` to its `half` (0 or 1); recurse into dicts/lists/tuples."""
    if isinstance(value, torch.Tensor):
        if value.dim() >= 1 and value.shape[0] == batch:
            size = batch // 2
            return value[half * size : (half + 1) * size]
        return value
    if isinstance(value, dict):
        return {k: take_batch_half(v, batch, half) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(take_batch_half(v, batch, half) for v in value)
    return value


class PatchParallelModel:
    """Owns the hooks, the comm manager, the step state and the swapped layers of one patch-parallel denoiser."""

    def __init__(
        self,
        model: nn.Module,
        ctx: ParallelContext,
        *,
        downsample_factor: int,
        slice_input_rows: bool,
        output_is_stripe: bool = True,
    ):
        self.model = model
        self.ctx = ctx
        self.downsample_factor = downsample_factor
        self.slice_input_rows = slice_input_rows
        self.output_is_stripe = output_is_stripe  # False: the model already gathered its stripes (SD3)
        self.state = PatchStepState(ctx.config)
        self.comm = CommManager(ctx.patch_group, ctx.patch_world_size, ctx.patch_index, ctx.config.comm_checkpoint)
        self._signature = inspect.signature(model.forward)
        self._sample_name = next(iter(self._signature.parameters))  # `sample` (UNet) / `hidden_states` (SD3)
        self._swapped: list[tuple[nn.Module, str, nn.Module]] = []
        self._input_key: tuple | None = None
        self._handles = [
            model.register_forward_pre_hook(self._before_forward, with_kwargs=True),
            model.register_forward_hook(self._after_forward),
        ]

    # -- layer swapping (used by the walkers) --------------------------------------------------------------------
    def swap(self, parent: nn.Module, name: str, wrapper: nn.Module) -> None:
        self._swapped.append((parent, name, getattr(parent, name)))
        setattr(parent, name, wrapper)

    @property
    def wrapper_kwargs(self) -> dict:
        return dict(
            comm=self.comm,
            state=self.state,
            patch_index=self.ctx.patch_index,
            patch_world_size=self.ctx.patch_world_size,
        )

    # -- per call -------------------------------------------------------------------------------------------------
    def begin_call(self) -> None:
        self.state.begin_call()

    def end_call(self) -> None:
        """Wait for the last step's exchanges so no collective outlives the call."""
        self.comm.wait_all()

    def remove(self) -> None:
        """Restore the original layers and detach the hooks."""
        self.comm.wait_all()
        for handle in self._handles:
            handle.remove()
        for parent, name, original in reversed(self._swapped):
            setattr(parent, name, original)
        self._swapped.clear()

    # -- hooks ----------------------------------------------------------------------------------------------------
    def _before_forward(self, module, args, kwargs):
        bound = self._signature.bind(*args, **kwargs)
        sample = bound.arguments[self._sample_name]
        cfg = self.ctx.config
        if self.state.step == 0:
            self._check_first_step(sample)
        if cfg.cfg_split and self.ctx.world_size > 1:
            batch = sample.shape[0]
            if batch % 2:
                raise ParallelConfigError(
                    f"cfg_split needs the model called with both CFG halves (an even batch), got batch {batch}; "
                    "enable guidance (guidance_scale > 1) or turn cfg_split off"
                )
            for name, value in bound.arguments.items():
                bound.arguments[name] = take_batch_half(value, batch, self.ctx.layout.batch_index)
        if self.slice_input_rows and self.ctx.patch_world_size > 1:
            sample = bound.arguments[self._sample_name]
            r0, r1 = row_range(sample.shape[2], self.ctx.patch_world_size, self.ctx.patch_index)
            bound.arguments[self._sample_name] = sample[:, :, r0:r1]
        return bound.args, bound.kwargs

    def _check_first_step(self, sample: torch.Tensor) -> None:
        if sample.dim() != 4:
            raise ParallelConfigError(f"expected a (B, C, H, W) latent, got shape {tuple(sample.shape)}")
        check_patch_divisible(sample.shape[2], self.downsample_factor, self.ctx.patch_world_size)
        key = (tuple(sample.shape), sample.dtype)
        if key != self._input_key:
            if self._input_key is not None:
                logger.info("input changed from %s to %s: re-registering exchange buffers", self._input_key, key)
            self.comm.reset()
            self._input_key = key

    def _after_forward(self, module, args, output):
        local = output[0] if isinstance(output, tuple) else output.sample
        full = self._gather_output(local)
        self.state.step += 1
        if not self.comm.allocated:
            self.comm.allocate(local.device)
        self.comm.flush()
        if isinstance(output, tuple):
            return (full,) + tuple(output[1:])
        output.sample = full
        return output

    def _gather_output(self, local: torch.Tensor) -> torch.Tensor:
        """(b, C, H/n, W) stripes of every rank -> (B, C, H, W), CFG halves in rank-half order.

        When the model already assembled its stripes, each rank holds its half's full output and only the first rank
        of each half is read.
        """
        if self.ctx.world_size == 1:
            return local
        parts = [torch.empty_like(local) for _ in range(self.ctx.world_size)]
        dist.all_gather(parts, local.contiguous(), group=self.ctx.world_group)
        per_half = self.ctx.patch_world_size
        splits = range(self.ctx.layout.num_batch_splits)
        if not self.output_is_stripe:
            return torch.cat([parts[h * per_half] for h in splits], dim=0)
        halves = [torch.cat(parts[h * per_half : (h + 1) * per_half], dim=2) for h in splits]
        return torch.cat(halves, dim=0)
