"""`init_parallel`: form (or adopt) the process group and return a `ParallelContext` passed to every wrapper.

The backend follows the device (NCCL on CUDA, gloo on CPU). Nothing is stored in module globals: wrappers receive the
context explicitly, so several contexts can be built in tests and the same code runs under torchrun,
`torch.multiprocessing` and Ray actors.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from modm.parallel.config import ParallelConfig
from modm.parallel.errors import ParallelConfigError, RendezvousError
from modm.parallel.partition import RankLayout, rank_layout

__all__ = ["ParallelContext", "init_parallel", "backend_for_device"]

logger = logging.getLogger(__name__)


def backend_for_device(device: torch.device) -> str:
    """NCCL for CUDA tensors, gloo for everything else (CPU tests, CPU serving)."""
    return "nccl" if device.type == "cuda" else "gloo"


@dataclass
class ParallelContext:
    """Live handles of one rank: who it is, which device it computes on and the groups it talks over."""

    config: ParallelConfig
    rank: int
    world_size: int
    device: torch.device
    backend: str
    layout: RankLayout
    world_group: object | None  # None when world_size == 1 (no process group needed)
    patch_group: object | None  # ranks sharing one image; None when a rank owns the whole image
    owns_process_group: bool = field(default=False)  # True when init_parallel created it (and destroy tears it down)

    @property
    def patch_world_size(self) -> int:
        return self.layout.patch_world_size

    @property
    def patch_index(self) -> int:
        return self.layout.patch_index

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def destroy(self) -> None:
        """Tear the process group down if this context created it. Safe to call twice."""
        if self.owns_process_group and dist.is_initialized():
            dist.destroy_process_group()
        self.owns_process_group = False
        self.world_group = self.patch_group = None


def init_parallel(
    cfg: ParallelConfig,
    *,
    rank: int,
    world_size: int,
    init_method: str | None = None,
    device: torch.device | str = "cpu",
    timeout_s: float | None = None,
) -> ParallelContext:
    """Join (or adopt) the default process group and build the patch groups for `cfg`.

    Args:
        cfg: the validated parallel configuration; `cfg.world_size` must equal `world_size`.
        rank, world_size: this process's rank and the number of ranks.
        init_method: a torch.distributed URL (`tcp://host:port`, `env://` under torchrun, `file://...`). Ignored
            when a default process group already exists (it is adopted and left for its creator to destroy).
        device: where this rank computes. CUDA devices get NCCL, the rest gloo.
        timeout_s: rendezvous and collective timeout; defaults to `cfg.timeout_s`. A missing rank raises
            `RendezvousError` after about this long instead of hanging.
    """
    device = torch.device(device)
    if world_size != cfg.world_size:
        raise ParallelConfigError(f"world_size={world_size} does not match the config's world_size={cfg.world_size}")
    layout = rank_layout(rank, world_size, cfg.cfg_split and cfg.is_patch_method)
    backend = backend_for_device(device)
    timeout = datetime.timedelta(seconds=timeout_s if timeout_s is not None else cfg.timeout_s)
    if world_size == 1 and not dist.is_initialized():
        return ParallelContext(cfg, rank, 1, device, backend, layout, world_group=None, patch_group=None)

    owns = False
    if dist.is_initialized():
        if dist.get_rank() != rank or dist.get_world_size() != world_size:
            raise ParallelConfigError(
                f"an existing process group has rank {dist.get_rank()} of {dist.get_world_size()}, "
                f"but rank {rank} of {world_size} was requested"
            )
    else:
        if init_method is None:
            raise ParallelConfigError("init_method is required to form a new process group (e.g. 'env://')")
        if device.type == "cuda":
            torch.cuda.set_device(device)  # before init: NCCL binds communicators to the current device
        try:
            dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size, timeout=timeout)
        except Exception as exc:  # torch raises DistStoreError/RuntimeError/TimeoutError depending on the stage
            raise RendezvousError(
                f"rank {rank} could not form a {backend} process group of {world_size} ranks at {init_method} "
                f"within {timeout.total_seconds():.0f} s: {exc}"
            ) from exc
        owns = True
    # Every rank must create every subgroup, in the same order, even the ones it is not a member of.
    patch_group = None
    if layout.patch_world_size > 1:
        if layout.num_batch_splits == 1:
            patch_group = dist.group.WORLD
        else:
            created = [dist.new_group(list(ranks), timeout=timeout) for ranks in layout.all_patch_groups]
            patch_group = created[layout.batch_index]
    logger.info(
        "rank %d/%d joined (%s on %s, stripe %d of %d, CFG half %d)",
        rank,
        world_size,
        backend,
        device,
        layout.patch_index,
        layout.patch_world_size,
        layout.batch_index,
    )
    return ParallelContext(
        cfg,
        rank,
        world_size,
        device,
        backend,
        layout,
        world_group=dist.group.WORLD,
        patch_group=patch_group,
        owns_process_group=owns,
    )
