"""Stage boundaries: an ordered split of t ∈ (0, 1) into stages, kept with the schedule it was found on."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from modm.multistage.schedules import NoiseSchedule

__all__ = ["BoundaryOrderError", "SplitMethod", "StageBoundaries", "check_ordered_boundaries"]


class BoundaryOrderError(ValueError):
    """Boundaries that are not strictly increasing or not inside their range."""


class SplitMethod(str, Enum):
    OPTIMAL_DENOISER = "optimal-denoiser"  # the paper's Alg. 1
    UNIFORM_T = "uniform-t"  # equal widths in t ("Timestep" row of the paper's Table 4)
    UNIFORM_LOG_SNR = "uniform-log-snr"  # equal widths in log-SNR (an "SNR" baseline)


def check_ordered_boundaries(values, *, low: float, high: float, what: str) -> tuple[float, ...]:
    """Return values as a tuple if strictly increasing and strictly inside (low, high); raise otherwise."""
    values = tuple(float(v) for v in values)
    for v in values:
        if not low < v < high:
            raise BoundaryOrderError(f"{what} {v} is outside ({low}, {high}); all boundaries: {list(values)}")
    for prev, cur in zip(values, values[1:]):
        if not prev < cur:
            raise BoundaryOrderError(f"{what} must strictly increase, got {prev} then {cur} in {list(values)}")
    return values


@dataclass(frozen=True)
class StageBoundaries:
    """Boundaries t_1 < … < t_{n-1}; stage k covers [t_k, t_{k+1}) with t_0 = 0 and t_n = 1 (stage 0 = low noise).

    Attributes:
        t: boundaries in t ∈ (0, 1), strictly increasing.
        schedule: the schedule they were found on (needed to express them as noise levels).
        method: how they were chosen.
    """

    t: tuple[float, ...]
    schedule: NoiseSchedule
    method: SplitMethod

    def __post_init__(self) -> None:
        object.__setattr__(self, "t", check_ordered_boundaries(self.t, low=0.0, high=1.0, what="boundary t"))
        object.__setattr__(self, "method", SplitMethod(self.method))

    @property
    def num_stages(self) -> int:
        return len(self.t) + 1

    @property
    def log_snr(self) -> tuple[float, ...]:
        """λ at each boundary (decreasing); the schedule-independent form used to map onto other schedulers."""
        return tuple(float(v) for v in self.schedule.log_snr(torch.tensor(self.t, dtype=torch.float64)))

    def stage_of_t(self, t: torch.Tensor) -> torch.Tensor:
        """Stage index of each t (boundary values belong to the later stage)."""
        return torch.bucketize(t.to(torch.float64), torch.tensor(self.t, dtype=torch.float64), right=True)

    def stage_of_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        """Stage index for noise levels given as log-SNR (higher λ = less noise = earlier stage)."""
        # λ decreases with t, so count the boundaries whose λ is at or above the given level.
        bounds = torch.tensor(self.log_snr, dtype=torch.float64)
        return (bounds[None, :] >= log_snr.to(torch.float64).reshape(-1, 1)).sum(1)
