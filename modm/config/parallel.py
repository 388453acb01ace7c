"""`ParallelConfig`: the declarative description of how one model runs on several devices.

It lives with the other configs (no torch import) and is re-exported by `modm.parallel`.

Constructing it never touches devices or process groups; `init_parallel` turns it into a live `ParallelContext`.
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, model_validator


__all__ = [
    "ParallelMethod",
    "GroupNormMode",
    "ParallelConfig",
    "ParallelConfigError",
    "DEFAULT_COMM_CHECKPOINT",
    "DEFAULT_TIMEOUT_S",
]

# distrifuser batches at most 60 queued tensors into one all_gather (utils.py, comm_checkpoint).
DEFAULT_COMM_CHECKPOINT = 60
DEFAULT_TIMEOUT_S = 120.0


class ParallelConfigError(ValueError):
    """A parallel setting that cannot work (world size vs method, stride, CFG split...)."""


class ParallelMethod(str, Enum):
    DISTRIFUSION = "distrifusion"  # displaced patch parallelism: rows split, stale neighbour activations
    NAIVE_PATCH = "naive_patch"  # baseline: rows split, no exchange between patches (visible seams)
    ASYNCDIFF = "asyncdiff"  # model split into components that run one step stale, in parallel
    # Context parallelism through diffusers' `enable_parallelism` (transformers with a `_cp_plan`, e.g. FLUX): the
    # token sequence is split across ranks and attention is exact.
    ULYSSES = "ulysses"  # all-to-all swaps sequence shards for head shards around each attention (any device)
    RING = "ring"  # key/value shards circulate; needs a CUDA attention backend returning the log-sum-exp
    NONE = "none"  # one device, the unmodified model


class GroupNormMode(str, Enum):
    """How DistriFusion's GroupNorm gets statistics of the whole image once past the synchronous warm-up."""

    SYNC = "sync"  # blocking exchange every step: exact, slowest
    STALE = "stale"  # own fresh statistics + the others' from the previous step
    CORRECTED_ASYNC = "corrected_async"  # stale global statistics + the change of this rank's own (distrifuser default)
    SEPARATE = "separate"  # patch-local statistics, no communication


class ParallelConfig(BaseModel):
    """How to run one denoiser on `world_size` ranks. Validated in isolation: no devices, no process groups."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: ParallelMethod = Field(default=ParallelMethod.NONE, description="Parallel inference method.")
    world_size: int = Field(default=1, ge=1, le=1024, description="Number of ranks (one device each).")
    warmup_steps: int = Field(
        default=4,
        ge=0,
        description="Denoising steps at the start of each call that run exactly (synchronous communication for "
        "DistriFusion, every rank computing the whole model for AsyncDiff). DistriFusion counts them as "
        "distrifuser does, after step 0 (steps 0..warmup_steps are synchronous: warmup_steps + 1); "
        "AsyncDiff counts from step 0 (steps 0..warmup_steps-1) and needs at least 1.",
    )
    always_synchronous: bool = Field(
        default=False,
        description="DistriFusion only: communicate synchronously at every step (exact, no overlap). "
        "Equivalent to warmup_steps >= the number of steps - 1.",
    )
    groupnorm_mode: GroupNormMode = Field(
        default=GroupNormMode.CORRECTED_ASYNC,
        description="DistriFusion GroupNorm statistics after the warm-up (see GroupNormMode).",
    )
    comm_checkpoint: int = Field(
        default=DEFAULT_COMM_CHECKPOINT,
        ge=1,
        description="DistriFusion: queued tensors that trigger one batched asynchronous all_gather.",
    )
    cfg_split: bool = Field(
        default=False,
        description="Patch methods: run the unconditional and conditional CFG halves on separate rank halves "
        "(needs an even world size and a pipeline that calls the model with batch 2*B).",
    )
    model_n: int = Field(default=2, ge=2, le=64, description="AsyncDiff: number of model components.")
    stride: int = Field(
        default=1,
        ge=1,
        le=2,
        description="AsyncDiff: 1 = every component every step; 2 = stride denoising, one parallel round produces "
        "two steps (needs one extra rank).",
    )
    time_shift: bool = Field(
        default=False,
        description="AsyncDiff: feed components the previous (noisier) timestep to compensate for stale inputs.",
    )
    timeout_s: float = Field(
        default=DEFAULT_TIMEOUT_S, gt=0, description="Seconds a rendezvous or collective may wait before failing."
    )

    @model_validator(mode="after")
    def _consistent(self) -> "ParallelConfig":
        m, w = self.method, self.world_size
        if m is ParallelMethod.NONE and w != 1:
            raise ParallelConfigError(f"method 'none' runs on one rank, got world_size={w}")
        if m is ParallelMethod.ASYNCDIFF:
            needed = self.model_n + self.stride - 1
            if w != needed:
                raise ParallelConfigError(
                    f"asyncdiff with model_n={self.model_n} and stride={self.stride} needs world_size "
                    f"model_n + stride - 1 = {needed}, got {w}"
                )
            if self.cfg_split:
                raise ParallelConfigError("cfg_split is not supported with asyncdiff (components hold both halves)")
            if self.warmup_steps < 1:
                raise ParallelConfigError(
                    "asyncdiff needs warmup_steps >= 1: the last warm-up step allocates the component caches"
                )
        if self.is_context_parallel:
            if w < 2:
                raise ParallelConfigError(f"{m.value} splits the token sequence across ranks: world_size >= 2, got {w}")
            if self.cfg_split:
                raise ParallelConfigError(f"cfg_split is not supported with {m.value} (every rank holds both halves)")
        if m in (ParallelMethod.DISTRIFUSION, ParallelMethod.NAIVE_PATCH) and self.cfg_split and w % 2:
            raise ParallelConfigError(f"cfg_split needs an even world_size (two CFG halves), got {w}")
        return self

    @property
    def is_context_parallel(self) -> bool:
        return self.method in (ParallelMethod.ULYSSES, ParallelMethod.RING)

    @property
    def is_patch_method(self) -> bool:
        return self.method in (ParallelMethod.DISTRIFUSION, ParallelMethod.NAIVE_PATCH)
