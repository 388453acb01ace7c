"""AsyncDiff: asynchronous denoising via model parallelism across steps, for diffusers denoisers."""

from modm.parallel.asyncdiff.model import AsyncDiffModel, AsyncUnit
from modm.parallel.asyncdiff.split import StepPlan, TimestepChoice, Unit, UnitTimer, denoiser_units, step_plan

__all__ = [
    "AsyncDiffModel",
    "AsyncUnit",
    "Unit",
    "UnitTimer",
    "denoiser_units",
    "StepPlan",
    "TimestepChoice",
    "step_plan",
]
