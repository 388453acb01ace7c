"""Shared pieces of the DistriFusion layer wrappers: the per-call step state and the wrapper base class."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
from torch import nn

from modm.parallel.config import ParallelConfig
from modm.parallel.distrifusion.comm import CommManager

__all__ = ["PatchStepState", "PatchWrapper"]

T = TypeVar("T")


@dataclass
class PatchStepState:
    """One object per wrapped model, read by all its layer wrappers (instead of a hidden counter in each layer).

    The model-level hook advances `step` after every forward; `begin_call` resets it at the start of a generation.
    """

    config: ParallelConfig
    step: int = 0
    call_index: int = 0

    def begin_call(self) -> None:
        self.step = 0
        self.call_index += 1

    @property
    def synchronous(self) -> bool:
        # As distrifuser (`counter <= warmup_steps`): step 0 plus `warmup_steps` more run synchronously; step 0 also
        # fills the buffers that the first asynchronous step reads as stale.
        return self.config.always_synchronous or self.step <= self.config.warmup_steps


class PatchWrapper(nn.Module):
    """Wraps one layer of a model whose activations are cut into row stripes, one stripe per rank of a group.

    `key` is the layer's module path; it names the layer's slot in the CommManager, identically on every rank.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        key: str,
        comm: CommManager,
        state: PatchStepState,
        patch_index: int,
        patch_world_size: int,
    ):
        super().__init__()
        self.module = module
        self.key = key
        self.comm = comm
        self.state = state
        self.patch_index = patch_index
        self.patch_world_size = patch_world_size

    def __getattr__(self, name: str):
        # Callers read attributes of the layers they call (e.g. `conv.weight.dtype`); serve the wrapped layer's.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("module"), name)

    def exchange(self, fresh: torch.Tensor, use: Callable[[list[torch.Tensor]], T], *, force_sync: bool = False) -> T:
        """Call `use` with every stripe's value of `fresh` (index = stripe) and return its result.

        Synchronous steps: all values are this step's (blocking all_gather). Asynchronous steps: this rank's entry is
        `fresh`, the others are the previous step's, read in place from the buffers; only after `use` returns is
        `fresh` queued, because a flush may start refilling the peers' slots right away.
        """
        idx = self.comm.slot(self.key, fresh)
        if force_sync or self.state.synchronous:
            return use(list(self.comm.gather_sync(idx, fresh)))
        self.comm.wait(idx)
        values = self.comm.peer_views(idx)
        values[self.patch_index] = fresh
        result = use(values)
        self.comm.enqueue(idx, fresh)
        return result
