"""`CommManager`: one owner for DistriFusion's exchange buffers and asynchronous handles.

Lifecycle (as in distrifuser's PatchParallelismCommManager, without globals):
1. register: during the first (always synchronous) step every wrapper asks for a slot by its module path and gets
   an index; slots are laid out back to back in one flat buffer per peer.
2. allocate: after that step the flat buffers are created and the first step's gathered values copied in.
3. enqueue/flush: in asynchronous steps a wrapper copies its fresh tensor into its own slot; consecutive slots are
   sent together by one `all_gather(async_op=True)` every `comm_checkpoint` tensors (or when the run breaks);
   the wrapper waits on its handle at its next use, so communication overlaps a whole step of compute.

Every rank registers, enqueues and flushes in the same order with equal shapes, so collectives always match.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["CommManager"]


@dataclass(frozen=True)
class _Slot:
    start: int
    end: int
    shape: torch.Size


class CommManager:
    """Flat per-peer buffers over one patch group, plus the handles of in-flight all_gathers."""

    def __init__(self, group, group_size: int, my_index: int, comm_checkpoint: int):
        self.group = group
        self.group_size = group_size
        self.my_index = my_index
        self.comm_checkpoint = comm_checkpoint
        self.reset()

    # -- registration ---------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every slot (e.g. the resolution changed). Waits for in-flight communication first."""
        if getattr(self, "_handles", None):
            self.wait_all()
        self._slots: list[_Slot] = []
        self._index_by_key: dict[str, int] = {}
        self._pending: dict[int, list[torch.Tensor]] = {}
        self._dtype: torch.dtype | None = None
        self._buffers: list[torch.Tensor] | None = None
        self._handles: list[object | None] = []
        self._queue: list[int] = []

    @property
    def allocated(self) -> bool:
        return self._buffers is not None

    def slot(self, key: str, like: torch.Tensor) -> int:
        """The slot index of `key`, registering it (before allocation) with `like`'s shape and dtype."""
        idx = self._index_by_key.get(key)
        if idx is not None:
            if self._slots[idx].shape != like.shape:
                raise RuntimeError(
                    f"{key}: exchanged tensor changed shape from {tuple(self._slots[idx].shape)} "
                    f"to {tuple(like.shape)} within one resolution"
                )
            return idx
        if self.allocated:
            raise RuntimeError(f"{key} asked for a communication slot after the buffers were allocated")
        if self._dtype is None:
            self._dtype = like.dtype
        elif like.dtype != self._dtype:
            raise RuntimeError(f"{key}: all exchanged tensors must share one dtype ({self._dtype}), got {like.dtype}")
        start = self._slots[-1].end if self._slots else 0
        self._slots.append(_Slot(start, start + like.numel(), like.shape))
        self._handles.append(None)
        self._index_by_key[key] = len(self._slots) - 1
        return len(self._slots) - 1

    def allocate(self, device: torch.device) -> None:
        """Create the flat buffers and copy in what the registration step gathered."""
        if self.allocated or not self._slots:
            return
        numel = self._slots[-1].end
        self._buffers = [torch.empty(numel, dtype=self._dtype, device=device) for _ in range(self.group_size)]
        for idx, gathered in self._pending.items():
            for view, value in zip(self.peer_views(idx), gathered):
                view.copy_(value)
        self._pending.clear()

    def peer_views(self, idx: int) -> list[torch.Tensor]:
        """This slot in every peer's buffer (index = stripe), shaped like the registered tensor."""
        s = self._slots[idx]
        return [buf[s.start : s.end].view(s.shape) for buf in self._buffers]

    # -- synchronous exchange -------------------------------------------------------------------------------------
    def gather_sync(self, idx: int, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Blocking all_gather of `tensor`; the result also becomes the stale value for the next async step."""
        if not self.allocated:
            out = [torch.empty_like(tensor) for _ in range(self.group_size)]
            dist.all_gather(out, tensor.contiguous(), group=self.group)
            self._pending[idx] = out
            return out
        self.wait(idx)
        views = self.peer_views(idx)
        dist.all_gather(views, tensor.contiguous(), group=self.group)
        return views

    # -- asynchronous exchange ------------------------------------------------------------------------------------
    def wait(self, idx: int) -> None:
        handle = self._handles[idx]
        if handle is not None:
            handle.wait()
            self._handles[idx] = None

    def enqueue(self, idx: int, tensor: torch.Tensor) -> None:
        """Publish this rank's fresh value of slot `idx`; it is sent with the next batched all_gather."""
        if not self.allocated:
            raise RuntimeError("enqueue before the communication buffers were allocated")
        if self._queue and self._queue[-1] != idx - 1:
            self.flush()  # one all_gather covers one contiguous range of slots
        self.wait(idx)
        s = self._slots[idx]
        self._buffers[self.my_index][s.start : s.end].view(s.shape).copy_(tensor)
        self._queue.append(idx)
        if len(self._queue) >= self.comm_checkpoint:
            self.flush()

    def flush(self) -> None:
        """Start one asynchronous all_gather for the queued slots."""
        if not self._queue:
            return
        start, end = self._slots[self._queue[0]].start, self._slots[self._queue[-1]].end
        outputs = [buf[start:end] for buf in self._buffers]
        # The input is this rank's own output slice: an in-place all_gather, fine on NCCL and gloo.
        handle = dist.all_gather(outputs, self._buffers[self.my_index][start:end], group=self.group, async_op=True)
        for idx in self._queue:
            self._handles[idx] = handle
        self._queue = []

    def wait_all(self) -> None:
        """Flush and wait for everything (end of a call, before teardown or re-registration)."""
        if self._queue:
            self.flush()
        for idx in range(len(self._handles)):
            self.wait(idx)
