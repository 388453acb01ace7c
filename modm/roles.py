"""The two model roles of a MoDM deployment: one name for the concept everywhere (config, policy, serving, sim)."""

from __future__ import annotations

from enum import Enum


class ModelRole(str, Enum):
    LARGE = "large"  # full generations (SD3.5-Large, FLUX.1-dev); also resumes NIRVANA latents
    SMALL = "small"  # refines cache hits (SDXL, SANA)


def small_tier_name(index: int) -> str:
    """The name of the small model at `index` of the tiers (0 = models.small): 'small', 'small2', 'small3', ..."""
    if index < 0:
        raise ValueError(f"tier index must be non-negative, got {index}")
    return ModelRole.SMALL.value if index == 0 else f"{ModelRole.SMALL.value}{index + 1}"
