"""The cache index tier in the simulator: reader replicas that serve lookups, one writer that commits admissions.

A request that retrieves (MoDM, NIRVANA) first waits for a free reader replica and holds it for `lookup_s`, then
goes on to routing; the replicas serve lookups first come first served. Arrivals reach the tier in time order, so
each lookup simply takes the reader that frees first (a min-heap of reader free times), which is exact for a FIFO
multi-server queue and needs no events of its own.

Admissions go to the single writer with group commit (modm.cache.group_commit): when the writer frees, every
admission that has arrived by then forms one commit costing `commit_s + n * admission_s` (one journal segment and
one fsync, plus the per-entry work). An admission does not delay its request (the pipeline admits in the
background), so the writer's queue only shows as admission lag; a writer that cannot keep up shows as a lag that
grows with the run.

Capacity planning (`replicas_needed`, `saturation_rate_per_s`) is plain arithmetic on the same numbers.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from modm.roles import ModelRole
from modm.sim.profiles import LatencyProfile

__all__ = [
    "IndexTier",
    "IndexTierConfig",
    "IndexTierReport",
    "replicas_needed",
    "saturation_rate_per_s",
    "steady_large_gpus",
]


class IndexTierConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    readers: int = Field(default=1, ge=1, description="CacheIndex replicas serving lookups.")
    lookup_s: float = Field(gt=0.0, description="Seconds a reader replica is busy per lookup (search + its call).")
    admission_s: float = Field(default=0.0, ge=0.0, description="The writer's seconds per admitted entry.")
    commit_s: float = Field(default=0.0, ge=0.0, description="The writer's seconds per commit (segment + fsync).")


@dataclass(frozen=True)
class IndexTierReport:
    readers: int
    lookups: int
    reader_utilisation: float  # busy reader-seconds / (readers x the span of the lookups)
    lookup_wait_p50_ms: float  # queueing before a reader takes the lookup
    lookup_wait_p99_ms: float
    lookup_wait_max_ms: float
    admissions: int
    commits: int
    writer_utilisation: float  # busy writer-seconds / the span of the admissions
    admission_lag_p50_ms: float  # from a request's completion to its admission's commit
    admission_lag_p99_ms: float
    admission_lag_max_ms: float


class IndexTier:
    def __init__(self, config: IndexTierConfig):
        self.config = config
        self._reader_free_at = [0.0] * config.readers  # a heap
        self._lookup_waits: list[float] = []
        self._first_lookup = self._last_lookup_end = None
        self._writer_free_at = 0.0
        self._pending: deque[float] = deque()  # arrival times of admissions not yet in a commit
        self._admission_lags: list[float] = []
        self._writer_busy_s = 0.0
        self._commits = 0
        self._first_admission = None

    def lookup(self, now: float) -> float:
        """A lookup arriving at `now`; returns when its answer is back."""
        free_at = heapq.heappop(self._reader_free_at)
        start = max(now, free_at)
        end = start + self.config.lookup_s
        heapq.heappush(self._reader_free_at, end)
        self._lookup_waits.append(start - now)
        if self._first_lookup is None:
            self._first_lookup = now
        self._last_lookup_end = end if self._last_lookup_end is None else max(self._last_lookup_end, end)
        return end

    def admit(self, now: float) -> None:
        """An admission arriving at `now` (times never decrease)."""
        self._commit_until(now)
        if self._first_admission is None:
            self._first_admission = now
        self._pending.append(now)

    def _commit_until(self, now: float) -> None:
        """Run the commits that start by `now`: each takes every admission that arrived before it starts."""
        while self._pending and self._writer_free_at <= now:
            start = max(self._writer_free_at, self._pending[0])
            batch = []
            while self._pending and self._pending[0] <= start:
                batch.append(self._pending.popleft())
            cost = self.config.commit_s + len(batch) * self.config.admission_s
            end = start + cost
            self._writer_busy_s += cost
            self._admission_lags.extend(end - t for t in batch)
            self._commits += 1
            self._writer_free_at = end

    def report(self) -> IndexTierReport:
        self._commit_until(math.inf)
        lookups = len(self._lookup_waits)
        lookup_span = (self._last_lookup_end - self._first_lookup) if lookups else 0.0
        admissions = len(self._admission_lags)
        admission_span = (self._writer_free_at - self._first_admission) if admissions else 0.0
        return IndexTierReport(
            readers=self.config.readers,
            lookups=lookups,
            reader_utilisation=_ratio(lookups * self.config.lookup_s, self.config.readers * lookup_span),
            lookup_wait_p50_ms=_percentile_ms(self._lookup_waits, 50),
            lookup_wait_p99_ms=_percentile_ms(self._lookup_waits, 99),
            lookup_wait_max_ms=_percentile_ms(self._lookup_waits, 100),
            admissions=admissions,
            commits=self._commits,
            writer_utilisation=_ratio(self._writer_busy_s, admission_span),
            admission_lag_p50_ms=_percentile_ms(self._admission_lags, 50),
            admission_lag_p99_ms=_percentile_ms(self._admission_lags, 99),
            admission_lag_max_ms=_percentile_ms(self._admission_lags, 100),
        )


def replicas_needed(lookups_per_s: float, lookup_s: float, max_utilisation: float, min_replicas: int = 2) -> int:
    """Reader replicas that keep each one at most `max_utilisation` busy, and at least `min_replicas` (one can be
    lost without stopping retrieval)."""
    if lookups_per_s < 0 or lookup_s <= 0 or not 0 < max_utilisation <= 1:
        raise ValueError(
            f"need lookups_per_s >= 0, lookup_s > 0 and max_utilisation in (0, 1]; got {lookups_per_s}, "
            f"{lookup_s}, {max_utilisation}"
        )
    return max(min_replicas, math.ceil(lookups_per_s * lookup_s / max_utilisation))


def _gpu_seconds(
    profile: LatencyProfile, hit_rate: float, k_mix: Mapping[int, float], total_steps: int
) -> tuple[float, float]:
    """Mean GPU-seconds per request spent on misses (large model) and on hits (the small model refining)."""
    weights = sum(k_mix.values())
    if hit_rate > 0 and weights <= 0:
        raise ValueError(f"k_mix needs a positive total weight, got {dict(k_mix)}")
    hit_s = 0.0
    if hit_rate > 0:
        hit_s = sum(w * profile.service_s(ModelRole.SMALL, k, total_steps) for k, w in k_mix.items()) / weights
    return (1.0 - hit_rate) * profile.full_s(ModelRole.LARGE), hit_rate * hit_s


def saturation_rate_per_s(
    profile: LatencyProfile, n_gpus: int, hit_rate: float, k_mix: Mapping[int, float], total_steps: int
) -> float:
    """The request rate MoDM's GPUs serve at full use: n_gpus over the mean GPU-seconds of a request (a miss costs
    a full large generation, a hit at k the remaining fraction of a small one), with the large/small split free."""
    miss_s, hit_s = _gpu_seconds(profile, hit_rate, k_mix, total_steps)
    return n_gpus / (miss_s + hit_s)


def steady_large_gpus(
    profile: LatencyProfile, n_gpus: int, hit_rate: float, k_mix: Mapping[int, float], total_steps: int
) -> int:
    """The large model's share of `n_gpus` in proportion to the misses' share of the GPU work (at least one GPU
    each): where MoDM's monitor settles under a steady load, so a short run starts in steady state."""
    miss_s, hit_s = _gpu_seconds(profile, hit_rate, k_mix, total_steps)
    return min(max(1, round(n_gpus * miss_s / (miss_s + hit_s))), n_gpus - 1)


def _percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000.0) if values else float("nan")


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("nan")
