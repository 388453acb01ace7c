"""`models.<role>.feature_cache`: which of diffusers' feature-cache hooks skips work inside a model's steps.

Each kind mirrors one diffusers 0.42.1 config class, with its field names and defaults (`FirstBlockCacheConfig`,
`TaylorSeerCacheConfig`, `PyramidAttentionBroadcastConfig`); `modm.generation.feature_cache` turns it into the hook.
Fields that diffusers fills in at run time (the timestep callback) or that name modules by regular expression are
not configurable here: modm supplies the first and keeps diffusers' defaults for the second. No torch import.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "FEATURE_CACHE_INFO_KEY",
    "FeatureCacheConfig",
    "FeatureCacheKind",
    "FirstBlockCacheSpec",
    "PyramidAttentionBroadcastSpec",
    "TaylorSeerCacheSpec",
]

# The key under which a generation's skip counts travel with its image: the PIL image's `info`, then a PNG text
# chunk of its bytes (`modm.images.png_bytes`), which the request pipeline reads into the response's decision.
FEATURE_CACHE_INFO_KEY = "modm_feature_cache"


class FeatureCacheKind(str, Enum):
    FIRST_BLOCK = "first_block"
    TAYLORSEER = "taylorseer"
    PYRAMID_ATTENTION_BROADCAST = "pyramid_attention_broadcast"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FirstBlockCacheSpec(_Strict):
    """First-block cache: run the first transformer block; when its residual changed by less than `threshold`
    (relative absolute mean) since the last full step, reuse the cached residual of all the other blocks."""

    kind: Literal[FeatureCacheKind.FIRST_BLOCK] = FeatureCacheKind.FIRST_BLOCK
    threshold: float = Field(default=0.05, gt=0.0, description="Relative change of the first block's residual.")


class TaylorSeerCacheSpec(_Strict):
    """TaylorSeer: compute the attention modules every `cache_interval` steps and predict their outputs in between
    with a Taylor expansion of order `max_order`."""

    kind: Literal[FeatureCacheKind.TAYLORSEER] = FeatureCacheKind.TAYLORSEER
    cache_interval: int = Field(default=5, ge=1, description="Steps between full computations.")
    disable_cache_before_step: int = Field(default=3, ge=0, description="Full computation before this step.")
    disable_cache_after_step: int | None = Field(default=None, ge=0, description="Full computation from this step.")
    max_order: int = Field(default=1, ge=0, le=4, description="Order of the Taylor expansion.")
    taylor_factors_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    use_lite_mode: bool = Field(default=False, description="Cache only proj_out and skip the blocks.")

    @model_validator(mode="after")
    def _window(self) -> "TaylorSeerCacheSpec":
        after = self.disable_cache_after_step
        if after is not None and after <= self.disable_cache_before_step:
            raise ValueError(
                f"disable_cache_after_step={after} must exceed disable_cache_before_step="
                f"{self.disable_cache_before_step}, or no step would be cached"
            )
        return self


class PyramidAttentionBroadcastSpec(_Strict):
    """Pyramid attention broadcast: inside the timestep window, compute each self-attention (cross-attention) every
    `*_block_skip_range` steps and reuse its last output in between. Timesteps are the scheduler's (0 to 1000)."""

    kind: Literal[FeatureCacheKind.PYRAMID_ATTENTION_BROADCAST] = FeatureCacheKind.PYRAMID_ATTENTION_BROADCAST
    # diffusers' default is None, which it replaces by 2 with a warning: modm says 2 outright.
    spatial_attention_block_skip_range: int | None = Field(default=2, ge=2)
    cross_attention_block_skip_range: int | None = Field(default=None, ge=2)
    spatial_attention_timestep_skip_range: tuple[int, int] = (100, 800)
    cross_attention_timestep_skip_range: tuple[int, int] = (100, 800)

    @model_validator(mode="after")
    def _ranges(self) -> "PyramidAttentionBroadcastSpec":
        if self.spatial_attention_block_skip_range is None and self.cross_attention_block_skip_range is None:
            raise ValueError("set spatial_attention_block_skip_range or cross_attention_block_skip_range")
        for name in ("spatial_attention_timestep_skip_range", "cross_attention_timestep_skip_range"):
            low, high = getattr(self, name)
            if not low < high:
                raise ValueError(f"{name}=({low}, {high}) is empty")
        return self


FeatureCacheConfig = Annotated[
    Union[FirstBlockCacheSpec, TaylorSeerCacheSpec, PyramidAttentionBroadcastSpec],
    Field(discriminator="kind"),
]
