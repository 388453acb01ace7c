"""Monitor: MoDM's global monitor (modm.serving.monitor.MonitorService) as a one-replica deployment. Its allocation
is applied by broadcasting the replica targets to the LargeModel and SmallModel replicas, whose autoscaling policy
enacts them (deployments/autoscaling.py)."""

from __future__ import annotations

import asyncio

from deployments.handles import HandleProxy
from deployments.metrics import MonitorMetrics
from modm.config import MonitorConfig
from modm.policy import Allocation
from modm.roles import ModelRole
from modm.serving.monitor import MonitorService


class MonitorServer(MonitorService):
    async def __init__(self, config: dict, total_steps: int, large, small):
        self.large, self.small = large, small
        pools = {ModelRole.LARGE: HandleProxy(large), ModelRole.SMALL: HandleProxy(small)}
        super().__init__(
            MonitorConfig.model_validate(config), total_steps, pools, self._broadcast, metrics=MonitorMetrics()
        )
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def _broadcast(self, allocation: Allocation) -> None:
        await asyncio.gather(
            self.large.broadcast("set_target_replicas", allocation.large).results_async(),
            self.small.broadcast("set_target_replicas", allocation.small).results_async(),
        )

    def check_health(self) -> None:
        if self._task.done():
            raise RuntimeError(f"monitor loop stopped: {self._task.exception()!r}")
