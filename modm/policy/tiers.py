"""Overload tiering: which of several small models (tiers, best quality first) refines the cache hits.

MoDM's paper answers overload by switching the small model itself (Fig. 10: SDXL up to about 22 req/min, SANA-1.6B
above); its code takes the small model as a fixed argument. Here the choice is a pure function of the window, run
before Algorithm 1: with the window's workloads (`modm.policy.monitor.workloads`, in full-generation equivalents) a
tier t needs the budget share

    share(t) = (W_miss / P_large + W_hit / P_t) / N

of the N replicas (misses on the large model, hits on tier t). The chosen tier is the best-quality one whose share
is at most `headroom`; when none is, the cheapest (best effort, like Algorithm 1's infeasible fallback). Algorithm 1
then splits N between the large model and the chosen tier with that tier's throughput, so quality mode still keeps
the large model's share first.

Hysteresis, so that a load near a boundary does not flap between tiers (each switch reloads replicas): a move to a
cheaper tier happens in the window that needs it (overload does not wait), a move back to a better tier only once
its share is at most `headroom - hysteresis` for `upgrade_windows` windows in a row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from modm.config.schema import MonitorConfig
from modm.policy.monitor import Allocation, GlobalMonitor, Throughput, WindowStats, workloads

__all__ = ["TierDecision", "TierPolicy", "TieredAllocation", "TieredMonitor", "budget_share"]


def budget_share(stats: WindowStats, large_per_min: float, small_per_min: float, n: int) -> float:
    """The fraction of N replicas that the window's misses (large model) and hits (this small model) keep busy."""
    if large_per_min <= 0 or small_per_min <= 0 or n < 1:
        raise ValueError(f"bad capacity: P_large={large_per_min}, P_small={small_per_min}, N={n}")
    w_miss, w_hit = workloads(stats)
    return (w_miss / large_per_min + w_hit / small_per_min) / n


@dataclass(frozen=True)
class TierDecision:
    tier: str  # the small model that refines hits from now on
    shares: Mapping[str, float]  # budget_share of each tier in this window (empty before the first window)
    fits: bool | None  # the chosen tier's share is within headroom (None before the first window)
    switched: bool  # the tier changed in this window

    def as_dict(self) -> dict:
        return {"tier": self.tier, "shares": dict(self.shares), "fits": self.fits, "switched": self.switched}


@dataclass
class TierPolicy:
    """The tier choice with hysteresis; `tiers` ordered best quality first."""

    tiers: Sequence[str]
    headroom: float = 0.9
    hysteresis: float = 0.15
    upgrade_windows: int = 3
    current: int = 0  # index into tiers
    _upgrade_streak: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.tiers = tuple(self.tiers)
        if not self.tiers or len(set(self.tiers)) != len(self.tiers):
            raise ValueError(f"tiers must be distinct names, at least one: {self.tiers!r}")
        if not 0 < self.headroom <= 1 or not 0 <= self.hysteresis < self.headroom:
            raise ValueError(
                f"need 0 < headroom <= 1 and 0 <= hysteresis < headroom: {self.headroom}, {self.hysteresis}"
            )
        if self.upgrade_windows < 1 or not 0 <= self.current < len(self.tiers):
            raise ValueError(f"bad upgrade_windows={self.upgrade_windows} or current={self.current}")

    @classmethod
    def from_config(cls, tiers: Sequence[str], config: MonitorConfig) -> "TierPolicy":
        return cls(tiers, config.headroom, config.tier_hysteresis, config.tier_upgrade_windows)

    @property
    def tier(self) -> str:
        return self.tiers[self.current]

    def choose(
        self, stats: WindowStats, large_per_min: float, tier_per_min: Mapping[str, float], n: int
    ) -> TierDecision:
        missing = [t for t in self.tiers if t not in tier_per_min]
        if missing:
            raise ValueError(f"no throughput for tier(s) {missing}")
        shares = {t: budget_share(stats, large_per_min, tier_per_min[t], n) for t in self.tiers}
        if stats.request_rate <= 0:  # an idle window says nothing about the load: hold
            return TierDecision(self.tier, shares, shares[self.tier] <= self.headroom, switched=False)
        before = self.current
        self.current = self._next(shares)
        return TierDecision(self.tier, shares, shares[self.tier] <= self.headroom, switched=self.current != before)

    def _next(self, shares: Mapping[str, float]) -> int:
        share = [shares[t] for t in self.tiers]
        if share[self.current] > self.headroom:  # overload: move now, to the best tier that fits (else the cheapest)
            self._upgrade_streak = 0
            return next((i for i, s in enumerate(share) if s <= self.headroom), len(share) - 1)
        better = next((i for i in range(self.current) if share[i] <= self.headroom - self.hysteresis), None)
        self._upgrade_streak = 0 if better is None else self._upgrade_streak + 1
        if better is None or self._upgrade_streak < self.upgrade_windows:
            return self.current
        self._upgrade_streak = 0
        return better


@dataclass(frozen=True)
class TieredAllocation:
    allocation: Allocation  # large / small split; `small` replicas all run `decision.tier`
    decision: TierDecision
    tiers: tuple[str, ...]  # every tier, best quality first

    @property
    def large(self) -> int:
        return self.allocation.large

    @property
    def small(self) -> int:
        return self.allocation.small

    @property
    def tier(self) -> str:
        return self.decision.tier

    def replicas(self) -> dict[str, int]:
        """Replica target per small tier: the chosen one gets the small share, the others none."""
        return {t: self.allocation.small if t == self.decision.tier else 0 for t in self.tiers}


@dataclass
class TieredMonitor:
    """The tier policy, then Algorithm 1 (GlobalMonitor) with the chosen tier's throughput as P_small."""

    config: MonitorConfig
    tiers: Sequence[str]
    initial_large: int | None = None
    monitor: GlobalMonitor = field(init=False)
    policy: TierPolicy = field(init=False)

    def __post_init__(self) -> None:
        self.monitor = GlobalMonitor(self.config, self.initial_large)
        self.policy = TierPolicy.from_config(self.tiers, self.config)

    @property
    def tier(self) -> str:
        return self.policy.tier

    @property
    def current(self) -> TieredAllocation:
        """The allocation before any window: the initial split, the best tier."""
        decision = TierDecision(self.tier, {}, fits=None, switched=False)
        return TieredAllocation(self.monitor.current, decision, self.policy.tiers)

    def step(self, stats: WindowStats, large_per_min: float, tier_per_min: Mapping[str, float]) -> TieredAllocation:
        decision = self.policy.choose(stats, large_per_min, tier_per_min, self.config.gpu_budget)
        allocation = self.monitor.step(stats, Throughput(large_per_min, tier_per_min[decision.tier]))
        return TieredAllocation(allocation, decision, self.policy.tiers)
