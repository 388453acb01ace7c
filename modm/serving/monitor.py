"""MoDM's global monitor as a service: routers report their window counts (modm.policy.WindowCounts, counted at
arrival); every window it turns them into R, H and P(k), chooses the small-model tier (modm.policy.tiers; one tier
unless models.small_tiers lists more), steps Algorithm 1 (modm.policy.GlobalMonitor) and applies the resulting
allocation through an injected callback (in the Serve app: the replica targets published where the model
deployments' autoscaling policy reads them, deployments/autoscaling.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from modm.config import MonitorConfig
from modm.policy import BatchCapacity, Throughput, WindowCounter, WindowCounts, WindowStats
from modm.policy.tiers import TieredAllocation, TieredMonitor
from modm.roles import ModelRole
from modm.serving.backends import CAPACITY_POLL_TIMEOUT_S, Clock, ModelPool, SystemClock

logger = logging.getLogger(__name__)

__all__ = ["MonitorMetricsSink", "MonitorService"]

HISTORY_SHOWN = 20  # windows get_allocation() returns


class MonitorMetricsSink(Protocol):
    def window(self, request_rate: float, hit_rate: float) -> None: ...

    def allocation(self, large: int, small: int, target: float) -> None: ...

    def tier(self, replicas: dict[str, int], chosen: str, shares: dict[str, float]) -> None: ...


class MonitorService:
    """`pools`: the large model's and the small one's. `tiers`: with small-model tiers, every small model's pool
    by tier name, best quality first ('small' is pools[SMALL]); `profiled_s`: configured batch-1 seconds per full
    generation by pool name ('large' or a tier), used instead of asking a pool that may have no replica."""

    def __init__(
        self,
        config: MonitorConfig,
        total_steps: int,
        pools: dict[ModelRole, ModelPool],
        apply: Callable[[TieredAllocation], Awaitable[None]],
        *,
        tiers: dict[str, ModelPool] | None = None,
        profiled_s: dict[str, float] | None = None,
        clock: Clock | None = None,
        metrics: MonitorMetricsSink | None = None,
    ):
        self.config, self.total_steps = config, total_steps
        self._apply, self.clock, self.metrics = apply, clock or SystemClock(), metrics
        # Every pool by name: 'large', then the small tiers.
        self.pools = {
            ModelRole.LARGE.value: pools[ModelRole.LARGE],
            **(tiers or {ModelRole.SMALL.value: pools[ModelRole.SMALL]}),
        }
        self.monitor = TieredMonitor(config, [name for name in self.pools if name != ModelRole.LARGE.value])
        self.allocation: TieredAllocation = self.monitor.current
        self.throughput: Throughput | None = None
        self.tier_per_min: dict[str, float] = {}
        # Batch-1 seconds per full generation: configured, else measured once.
        self._profiled_s: dict[str, float] = dict(profiled_s or {})
        self._batches: dict[str, bool] = {}  # whether the pool's replicas batch (their info, read once)
        self._window = WindowCounter()
        self._window_started = self.clock.monotonic()
        self.history: list[dict] = []

    def report(self, counts: dict) -> None:
        """Counts seen by one router since its last report (`WindowCounts.as_dict()`)."""
        self._window.merge(WindowCounts.from_dict(counts))

    def get_allocation(self) -> dict:
        throughput, decision = self.throughput, self.allocation.decision
        return {
            "large": self.allocation.large,
            "small": self.allocation.small,
            "target_large": self.allocation.allocation.target,
            "feasible": self.allocation.allocation.feasible,
            "mode": self.config.mode.value,
            "window_s": self.config.window_s,
            "throughput_per_min": None
            if throughput is None
            else {"large": throughput.large_per_min, "small": throughput.small_per_min},
            # The small model that refines hits, each tier's replicas, and the inputs of the choice.
            "tier": decision.tier,
            "tiers": {
                "replicas": self.allocation.replicas(),
                "throughput_per_min": dict(self.tier_per_min) or None,
                "budget_share": dict(decision.shares) or None,
                "fits": decision.fits,
                "headroom": self.config.headroom,
                "hysteresis": self.config.tier_hysteresis,
            },
            "history": self.history[-HISTORY_SHOWN:],
        }

    async def run(self) -> None:
        """Apply the initial allocation (retrying while the model pools start), then step every window."""
        while True:
            try:
                await self.apply(self.allocation)
                break
            except Exception as err:
                logger.info("monitor: model replicas not reachable yet (%s); retrying", type(err).__name__)
                await self.clock.sleep(1.0)
        self._window_started = self.clock.monotonic()
        while True:
            await self.clock.sleep(self.config.window_s)
            try:
                await self.step()
            except Exception:  # a failed window must not stop the monitor
                logger.exception("monitor: window failed")

    async def step(self) -> TieredAllocation:
        """Close the window, choose the tier, step Algorithm 1 on it, and apply the allocation."""
        stats = self._close_window()
        large_per_min = await self._profile()
        self.allocation = self.monitor.step(stats, large_per_min, self.tier_per_min)
        tier = self.allocation.tier
        self.throughput = Throughput(large_per_min, self.tier_per_min[tier])
        self.history.append(
            {
                "t": self.clock.wall(),
                "R": stats.request_rate,
                "H": stats.hit_rate,
                "large": self.allocation.large,
                "small": self.allocation.small,
                "tier": tier,
            }
        )
        if self.metrics is not None:
            self.metrics.window(stats.request_rate, stats.hit_rate)
        logger.info(
            "monitor: R=%.1f/min H=%.2f -> large=%d small=%d (target %.2f), tier %s",
            stats.request_rate,
            stats.hit_rate,
            self.allocation.large,
            self.allocation.small,
            self.allocation.allocation.target,
            tier,
        )
        await self.apply(self.allocation)
        return self.allocation

    async def apply(self, allocation: TieredAllocation) -> None:
        if self.metrics is not None:
            self.metrics.allocation(allocation.large, allocation.small, allocation.allocation.target)
            self.metrics.tier(allocation.replicas(), allocation.tier, dict(allocation.decision.shares))
        # Re-sent every window so replicas started since the last change learn the target too.
        await self._apply(allocation)

    async def _profile(self) -> float:
        """P per replica of every pool (P_large returned, the tiers' in tier_per_min): full generations per minute
        at the batch size each pool runs now, as its replicas measure it while serving; until a pool has run
        anything, or while it has no replica, 60 / its batch-1 profile (MoDM's P)."""
        replicas = {ModelRole.LARGE.value: self.allocation.large, **self.allocation.replicas()}
        per_min = {name: await self._per_min(name, replicas[name] > 0) for name in self.pools}
        large = per_min.pop(ModelRole.LARGE.value)
        if per_min != self.tier_per_min:
            logger.info("monitor: P_large=%.2f, P per tier %s full generations/min/replica", large, per_min)
        self.tier_per_min = per_min
        return large

    async def _per_min(self, name: str, has_replicas: bool) -> float:
        pool = self.pools[name]
        measured = None
        if has_replicas:  # a pool at zero replicas answers nothing: its profile
            if name not in self._batches:
                self._batches[name] = (await pool.info()).get("max_batch_size", 1) > 1
            if self._batches[name]:  # a pool that runs one request at a time: its profile is its capacity
                try:
                    costs = await asyncio.wait_for(pool.capacity(), CAPACITY_POLL_TIMEOUT_S)
                    steps = int(costs["num_inference_steps"])
                    measured = BatchCapacity.from_costs(costs).generations_per_min(steps)
                except Exception as err:  # a busy or unreachable pool: its profile
                    logger.debug("monitor: capacity of the %s model not read: %r", name, err)
        if measured is not None:
            return measured
        if name not in self._profiled_s:
            self._profiled_s[name] = await pool.profile()
        return 60.0 / self._profiled_s[name]

    def _close_window(self) -> WindowStats:
        now = self.clock.monotonic()
        stats = self._window.close(max(now - self._window_started, 1e-6), self.total_steps)
        self._window_started = now
        return stats
