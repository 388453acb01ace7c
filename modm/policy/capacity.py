"""What a model replica can serve when it batches, from the costs it measured at the batch sizes it ran.

Pure arithmetic on `StepCosts.as_dict()` (modm.generation.step_costs): seconds per image-step by batch size. Admission
control (`modm.policy.backpressure`) reads a batch's latency from it, the global monitor a replica's throughput at the
batch size the replica actually runs (MoDM's P = 60 / latency, profiled at batch 1, is the unbatched special case).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["BatchCapacity"]


@dataclass(frozen=True)
class BatchCapacity:
    max_batch_size: int  # most requests one batch of the replica holds
    seconds_per_image_step: Mapping[int, float] = field(default_factory=dict)  # measured, by batch size
    mean_batch_size: float | None = None  # of the replica's recent passes

    def __post_init__(self) -> None:
        if not isinstance(self.max_batch_size, int) or self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be a positive integer, got {self.max_batch_size!r}")
        for size, seconds in self.seconds_per_image_step.items():
            if size < 1 or not (math.isfinite(seconds) and seconds > 0):
                raise ValueError(f"bad step cost {seconds!r} at batch size {size!r}")

    @classmethod
    def from_costs(cls, costs: Mapping) -> "BatchCapacity":
        """From `StepCosts.as_dict()` (keys may have become strings on the way: JSON, a handle)."""
        measured = {int(b): float(s) for b, s in costs.get("seconds_per_image_step", {}).items() if float(s) > 0}
        mean = costs.get("mean_batch_size")
        return cls(int(costs.get("max_batch_size", 1)), measured, None if mean is None else float(mean))

    @property
    def measured(self) -> bool:
        return bool(self.seconds_per_image_step)

    def image_step_s(self, batch_size: int) -> float | None:
        """Seconds per image-step at `batch_size`: measured there, else linear between the nearest measured sizes,
        else the nearest measured size's (no gain assumed beyond what was seen). None before any measurement."""
        costs = self.seconds_per_image_step
        if not costs:
            return None
        if batch_size in costs:
            return costs[batch_size]
        below = [b for b in costs if b < batch_size]
        above = [b for b in costs if b > batch_size]
        if not below:
            return costs[min(above)]
        if not above:
            return costs[max(below)]
        lo, hi = max(below), min(above)
        return costs[lo] + (costs[hi] - costs[lo]) * (batch_size - lo) / (hi - lo)

    def batch_latency_s(self, batch_size: int, steps: int) -> float | None:
        """Seconds for one batch of `batch_size` requests of `steps` denoising steps each."""
        per = self.image_step_s(batch_size)
        return None if per is None else per * batch_size * steps

    def typical_batch_size(self) -> int:
        """The batch size the replica runs now (rounded recent mean), within 1..max_batch_size."""
        if self.mean_batch_size is None:
            return 1
        return min(self.max_batch_size, max(1, round(self.mean_batch_size)))

    def generations_per_min(self, total_steps: int) -> float | None:
        """Full generations (total_steps each) per minute per replica at the batch size it runs now."""
        per = self.image_step_s(self.typical_batch_size())
        return None if per is None else 60.0 / (per * total_steps)
