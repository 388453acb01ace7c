"""MoDM's global monitor (Algorithm 1): how many of N replicas serve the large vs the small model.

Inputs per window: request rate R (req/min), hit rate H, the k mix P(k) over hits, and each model's profiled
throughput per replica (full generations per minute). Workloads in full-generation equivalents (paper Eqs. 6-9):
    W_miss = (1 - H) R,    W_hit = H R sum_k P(k) (1 - k/T).
Quality mode maximises N_large subject to N_large P_large >= W_miss and the spare large capacity plus the small
replicas covering W_hit (with the code's 0.9 headroom). Throughput mode splits N in proportion to W_miss and the hit
workload weighted by P_large/P_small (Eqs. 11-12). A PID controller (0.6/0.05/0.05) smooths the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

from modm.config.schema import MonitorConfig, MonitorMode


@dataclass(frozen=True)
class WindowStats:
    request_rate: float  # R, requests per minute
    hit_rate: float  # H in [0, 1]
    k_mix: Mapping[int, float]  # P(k) over hits; normalised here
    total_steps: int = 50  # T

    def __post_init__(self):
        if self.request_rate < 0 or not 0 <= self.hit_rate <= 1:
            raise ValueError(f"bad window stats: R={self.request_rate}, H={self.hit_rate}")


@dataclass(frozen=True)
class Throughput:
    large_per_min: float  # P_large: full generations per minute per replica
    small_per_min: float  # P_small

    def __post_init__(self):
        if self.large_per_min <= 0 or self.small_per_min <= 0:
            raise ValueError(f"throughputs must be positive: {self}")

    @classmethod
    def from_latencies(cls, large_s: float, small_s: float) -> "Throughput":
        return cls(60.0 / large_s, 60.0 / small_s)


@dataclass(frozen=True)
class Allocation:
    large: int
    small: int
    target: float  # the unsmoothed heuristic target for N_large
    feasible: bool = True  # quality mode: False when even the best split cannot cover the load


def refine_fraction(k_mix: Mapping[int, float], total_steps: int) -> float:
    """F_refine = sum_k P(k) (1 - k/T): the cost of an average hit in full generations."""
    total = sum(k_mix.values())
    if total <= 0:
        return 1.0  # no hits observed: assume the worst case
    return sum(p / total * (1.0 - k / total_steps) for k, p in k_mix.items())


def workloads(stats: WindowStats) -> tuple[float, float]:
    w_miss = (1.0 - stats.hit_rate) * stats.request_rate
    w_hit = stats.hit_rate * stats.request_rate * refine_fraction(stats.k_mix, stats.total_steps)
    return w_miss, w_hit


def quality_target(stats: WindowStats, thr: Throughput, n: int, headroom: float = 0.9) -> tuple[int, bool]:
    """Largest N_large that still serves every hit (Algorithm 1, quality-optimised). Returns (N_large, feasible)."""
    w_miss, w_hit = workloads(stats)

    def spare(n_large: int) -> float:
        return n_large * thr.large_per_min - w_miss + (n - n_large) * thr.small_per_min

    n_large = max(1, math.ceil(w_miss / thr.large_per_min))
    if n_large > n or spare(n_large) < w_hit:
        return min(n_large, n), False
    while n_large < n and headroom * spare(n_large + 1) >= w_hit:
        n_large += 1
    return n_large, True


def throughput_target(stats: WindowStats, thr: Throughput, n: int) -> float:
    """N_large = W_miss / (W_hit P_large/P_small + W_miss) * N (Eq. 12), unrounded."""
    w_miss, w_hit = workloads(stats)
    weighted_hit = w_hit * thr.large_per_min / thr.small_per_min
    if w_miss + weighted_hit <= 0:
        return float(n)
    return w_miss / (weighted_hit + w_miss) * n


@dataclass
class PIDController:
    """MoDM's PIDController: the heuristic target is the set-point, the current (float) N_large the state."""

    kp: float
    ki: float
    kd: float
    dt: float
    limit: float
    current: float
    integral: float = 0.0
    prev_error: float = 0.0
    # Anti-windup (not in MoDM's code): with bounds, the state is clamped to them and the integral stops growing
    # while clamped, so a long stretch at a bound does not delay the move back.
    bounds: tuple[float, float] | None = None

    def update(self, target: float) -> float:
        error = target - self.current
        self.integral += error * self.dt
        derivative = (error - self.prev_error) / self.dt
        self.prev_error = error
        out = self.kp * error + self.ki * self.integral + self.kd * derivative
        self.current += max(-self.limit, min(self.limit, out))
        if self.bounds is not None:
            low, high = self.bounds
            if not low <= self.current <= high:
                self.current = max(low, min(high, self.current))
                self.integral -= error * self.dt
        return self.current


@dataclass
class GlobalMonitor:
    """Turns window stats into a smoothed large/small split of cfg.gpu_budget replicas."""

    cfg: MonitorConfig
    initial_large: int | None = None
    pid: PIDController = field(init=False)

    def __post_init__(self):
        n = self.cfg.gpu_budget
        start = n - self.cfg.min_small if self.initial_large is None else self.initial_large
        lo, hi = self.bounds
        self.pid = PIDController(
            self.cfg.kp,
            self.cfg.ki,
            self.cfg.kd,
            self.cfg.pid_dt,
            float(n),
            current=float(max(lo, min(hi, start))),
            bounds=(float(lo), float(hi)),
        )

    @property
    def bounds(self) -> tuple[int, int]:
        return 1, self.cfg.gpu_budget - self.cfg.min_small

    def clamp(self, n_large: float) -> int:
        lo, hi = self.bounds
        return int(max(lo, min(hi, round(n_large))))

    @property
    def current(self) -> Allocation:
        n_large = self.clamp(self.pid.current)
        return Allocation(n_large, self.cfg.gpu_budget - n_large, target=self.pid.current)

    def step(self, stats: WindowStats, thr: Throughput) -> Allocation:
        n = self.cfg.gpu_budget
        if stats.request_rate <= 0:
            return self.current  # an idle window says nothing about the mix: hold
        feasible = True
        if self.cfg.mode is MonitorMode.QUALITY:
            target, feasible = quality_target(stats, thr, n, self.cfg.headroom)
            if not feasible:
                # MoDM's harness stops here; a server instead falls back to the throughput split (best effort).
                target = throughput_target(stats, thr, n)
        else:
            target = throughput_target(stats, thr, n)
        n_large = self.clamp(self.pid.update(float(target)))
        return Allocation(n_large, n - n_large, target=float(target), feasible=feasible)
