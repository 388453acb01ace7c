"""The two model roles of a MoDM deployment: one name for the concept everywhere (config, policy, serving, sim)."""

from __future__ import annotations

from enum import Enum


class ModelRole(str, Enum):
    LARGE = "large"  # full generations (SD3.5-Large, FLUX.1-dev); also resumes NIRVANA latents
    SMALL = "small"  # refines cache hits (SDXL, SANA)
