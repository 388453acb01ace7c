"""Monitor: MoDM's global monitor as a one-replica deployment.

Routers report arrival/decision/hit/k counts (modm.policy.WindowCounts, counted at arrival); every window the
monitor turns them into R, H and P(k), steps Algorithm 1 (modm.policy.GlobalMonitor) and broadcasts the resulting
replica targets to the LargeModel and SmallModel replicas, whose autoscaling policy applies them
(deployments/autoscaling.py).
"""

from __future__ import annotations

import asyncio
import logging
import time

from deployments.metrics import MonitorMetrics
from modm.config import MonitorConfig
from modm.policy import Allocation, GlobalMonitor, Throughput, WindowCounter, WindowCounts, WindowStats

logger = logging.getLogger("ray.serve")


class MonitorServer:
    async def __init__(self, config: dict, total_steps: int, large, small):
        self.config = MonitorConfig.model_validate(config)
        self.total_steps = total_steps
        self.large, self.small = large, small
        self.monitor = GlobalMonitor(self.config)
        self.metrics = MonitorMetrics()
        self.allocation: Allocation = self.monitor.current
        self.throughput: Throughput | None = None
        self._window = WindowCounter()
        self._window_started = time.monotonic()
        self.history: list[dict] = []
        self._task = asyncio.get_running_loop().create_task(self._run())

    def report(self, counts: dict) -> None:
        """Counts seen by one router since its last report (`WindowCounts.as_dict()`)."""
        self._window.merge(WindowCounts.from_dict(counts))

    def get_allocation(self) -> dict:
        return {
            "large": self.allocation.large,
            "small": self.allocation.small,
            "target_large": self.allocation.target,
            "feasible": self.allocation.feasible,
            "mode": self.config.mode.value,
            "window_s": self.config.window_s,
            "throughput_per_min": None
            if self.throughput is None
            else {"large": self.throughput.large_per_min, "small": self.throughput.small_per_min},
            "history": self.history[-20:],
        }

    async def _profile(self) -> Throughput:
        if self.throughput is None:
            large_s, small_s = await asyncio.gather(self.large.profile.remote(), self.small.profile.remote())
            self.throughput = Throughput.from_latencies(large_s, small_s)
            logger.info(
                "monitor: profiled P_large=%.2f P_small=%.2f req/min/replica",
                self.throughput.large_per_min,
                self.throughput.small_per_min,
            )
        return self.throughput

    def _close_window(self) -> WindowStats:
        now = time.monotonic()
        stats = self._window.close(max(now - self._window_started, 1e-6), self.total_steps)
        self._window_started = now
        return stats

    async def _run(self) -> None:
        # The model deployments may still be starting: retry the initial target until their replicas are up.
        while True:
            try:
                await self._apply(self.allocation)
                break
            except Exception as err:
                logger.info("monitor: model replicas not reachable yet (%s); retrying", type(err).__name__)
                await asyncio.sleep(1.0)
        self._window_started = time.monotonic()
        while True:
            await asyncio.sleep(self.config.window_s)
            try:
                stats = self._close_window()
                self.allocation = self.monitor.step(stats, await self._profile())
                self.history.append(
                    {
                        "t": time.time(),
                        "R": stats.request_rate,
                        "H": stats.hit_rate,
                        "large": self.allocation.large,
                        "small": self.allocation.small,
                    }
                )
                self.metrics.window_rate.set(stats.request_rate)
                self.metrics.window_hit_rate.set(stats.hit_rate)
                logger.info(
                    "monitor: R=%.1f/min H=%.2f -> large=%d small=%d (target %.2f)",
                    stats.request_rate,
                    stats.hit_rate,
                    self.allocation.large,
                    self.allocation.small,
                    self.allocation.target,
                )
                await self._apply(self.allocation)
            except Exception:  # a failed window must not stop the monitor
                logger.exception("monitor: window failed")

    async def _apply(self, allocation: Allocation) -> None:
        self.metrics.allocation.set(allocation.large, tags={"model": "large"})
        self.metrics.allocation.set(allocation.small, tags={"model": "small"})
        self.metrics.target.set(allocation.target)
        # Re-sent every window so replicas started since the last change learn the target too.
        await asyncio.gather(
            self.large.broadcast("set_target_replicas", allocation.large).results_async(),
            self.small.broadcast("set_target_replicas", allocation.small).results_async(),
        )

    def check_health(self) -> None:
        if self._task.done():
            raise RuntimeError(f"monitor loop stopped: {self._task.exception()!r}")
