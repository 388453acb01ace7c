"""MoDM's global monitor as a service: routers report their window counts (modm.policy.WindowCounts, counted at
arrival); every window it turns them into R, H and P(k), steps Algorithm 1 (modm.policy.GlobalMonitor) and applies
the resulting allocation through an injected callback (in the Serve app: a broadcast of the replica targets to the
model deployments, whose autoscaling policy enacts them)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from modm.config import MonitorConfig
from modm.policy import (
    Allocation,
    BatchCapacity,
    GlobalMonitor,
    Throughput,
    WindowCounter,
    WindowCounts,
    WindowStats,
)
from modm.roles import ModelRole
from modm.serving.backends import CAPACITY_POLL_TIMEOUT_S, Clock, ModelPool, SystemClock

logger = logging.getLogger(__name__)

__all__ = ["MonitorMetricsSink", "MonitorService"]

HISTORY_SHOWN = 20  # windows get_allocation() returns


class MonitorMetricsSink(Protocol):
    def window(self, request_rate: float, hit_rate: float) -> None: ...

    def allocation(self, large: int, small: int, target: float) -> None: ...


class MonitorService:
    def __init__(
        self,
        config: MonitorConfig,
        total_steps: int,
        pools: dict[ModelRole, ModelPool],
        apply: Callable[[Allocation], Awaitable[None]],
        *,
        clock: Clock | None = None,
        metrics: MonitorMetricsSink | None = None,
    ):
        self.config, self.total_steps, self.pools = config, total_steps, pools
        self._apply, self.clock, self.metrics = apply, clock or SystemClock(), metrics
        self.monitor = GlobalMonitor(config)
        self.allocation: Allocation = self.monitor.current
        self.throughput: Throughput | None = None
        self._profiled_s: dict[ModelRole, float] = {}  # batch-1 seconds per full generation, measured once
        self._batches: dict[ModelRole, bool] = {}  # whether the pool's replicas batch (their info, read once)
        self._window = WindowCounter()
        self._window_started = self.clock.monotonic()
        self.history: list[dict] = []

    def report(self, counts: dict) -> None:
        """Counts seen by one router since its last report (`WindowCounts.as_dict()`)."""
        self._window.merge(WindowCounts.from_dict(counts))

    def get_allocation(self) -> dict:
        throughput = self.throughput
        return {
            "large": self.allocation.large,
            "small": self.allocation.small,
            "target_large": self.allocation.target,
            "feasible": self.allocation.feasible,
            "mode": self.config.mode.value,
            "window_s": self.config.window_s,
            "throughput_per_min": None
            if throughput is None
            else {"large": throughput.large_per_min, "small": throughput.small_per_min},
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

    async def step(self) -> Allocation:
        """Close the window, step Algorithm 1 on it, and apply the allocation."""
        stats = self._close_window()
        self.allocation = self.monitor.step(stats, await self._profile())
        self.history.append(
            {
                "t": self.clock.wall(),
                "R": stats.request_rate,
                "H": stats.hit_rate,
                "large": self.allocation.large,
                "small": self.allocation.small,
            }
        )
        if self.metrics is not None:
            self.metrics.window(stats.request_rate, stats.hit_rate)
        logger.info(
            "monitor: R=%.1f/min H=%.2f -> large=%d small=%d (target %.2f)",
            stats.request_rate,
            stats.hit_rate,
            self.allocation.large,
            self.allocation.small,
            self.allocation.target,
        )
        await self.apply(self.allocation)
        return self.allocation

    async def apply(self, allocation: Allocation) -> None:
        if self.metrics is not None:
            self.metrics.allocation(allocation.large, allocation.small, allocation.target)
        # Re-sent every window so replicas started since the last change learn the target too.
        await self._apply(allocation)

    async def _profile(self) -> Throughput:
        """P per replica: full generations per minute at the batch size each pool runs now, as its replicas
        measure it while serving; until a pool has run anything, 60 / its batch-1 profile (MoDM's P)."""
        per_min = {role: await self._per_min(role) for role in (ModelRole.LARGE, ModelRole.SMALL)}
        throughput = Throughput(per_min[ModelRole.LARGE], per_min[ModelRole.SMALL])
        if throughput != self.throughput:
            logger.info(
                "monitor: P_large=%.2f P_small=%.2f full generations/min/replica",
                throughput.large_per_min,
                throughput.small_per_min,
            )
        self.throughput = throughput
        return throughput

    async def _per_min(self, role: ModelRole) -> float:
        pool = self.pools[role]
        if role not in self._batches:
            self._batches[role] = (await pool.info()).get("max_batch_size", 1) > 1
        measured = None
        if self._batches[role]:  # a pool that runs one request at a time: its profile is its capacity
            try:
                costs = await asyncio.wait_for(pool.capacity(), CAPACITY_POLL_TIMEOUT_S)
                measured = BatchCapacity.from_costs(costs).generations_per_min(int(costs["num_inference_steps"]))
            except Exception as err:  # a busy or unreachable pool: its profile
                logger.debug("monitor: capacity of the %s model not read: %r", role.value, err)
        if measured is not None:
            return measured
        if role not in self._profiled_s:
            self._profiled_s[role] = await pool.profile()
        return 60.0 / self._profiled_s[role]

    def _close_window(self) -> WindowStats:
        now = self.clock.monotonic()
        stats = self._window.close(max(now - self._window_started, 1e-6), self.total_steps)
        self._window_started = now
        return stats
