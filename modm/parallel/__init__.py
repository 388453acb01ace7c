"""Parallel inference for diffusion denoisers on torch.distributed (NCCL on GPUs, gloo on CPU). Ray-free.

    cfg = ParallelConfig(method="distrifusion", world_size=2, warmup_steps=4)
    ctx = init_parallel(cfg, rank=rank, world_size=2, init_method="tcp://127.0.0.1:29500", device="cpu")
    image = ParallelPipeline(pipe, ctx)(prompt, generator=torch.Generator().manual_seed(0)).images[0]
    ctx.destroy()

Under torchrun pass `rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]), init_method="env://"`;
in a process that already formed the default group (Ray actors, torchrun scripts), `init_parallel` adopts it.
"""

from modm.parallel.config import GroupNormMode, ParallelConfig, ParallelMethod
from modm.parallel.context import ParallelContext, backend_for_device, init_parallel
from modm.parallel.context_parallel import ContextParallelDenoiser
from modm.parallel.errors import (
    ParallelConfigError,
    PatchSplitError,
    RendezvousError,
    SequenceSplitError,
    UnsupportedModelError,
)
from modm.parallel.partition import balanced_contiguous_split, check_patch_divisible, rank_layout, row_range
from modm.parallel.pipeline import ParallelDenoiser, ParallelPipeline, parallelize_denoiser

__all__ = [
    "ParallelConfig",
    "ParallelMethod",
    "GroupNormMode",
    "ParallelContext",
    "init_parallel",
    "backend_for_device",
    "ParallelPipeline",
    "ParallelDenoiser",
    "parallelize_denoiser",
    "ParallelConfigError",
    "PatchSplitError",
    "SequenceSplitError",
    "ContextParallelDenoiser",
    "UnsupportedModelError",
    "RendezvousError",
    "balanced_contiguous_split",
    "check_patch_divisible",
    "rank_layout",
    "row_range",
]
