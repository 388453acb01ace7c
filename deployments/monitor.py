"""Monitor: MoDM's global monitor (modm.serving.monitor.MonitorService) as a one-replica deployment. Its allocation
is applied by publishing each model deployment's replica target (LargeModel, and SmallModel, SmallModel2, ... per
small-model tier), which their autoscaling policy reads and enacts (deployments/autoscaling.py)."""

from __future__ import annotations

import asyncio

from ray import serve

from deployments.autoscaling import publish_target
from deployments.handles import HandleProxy
from deployments.metrics import MonitorMetrics
from modm.config import MonitorConfig
from modm.policy.tiers import TieredAllocation
from modm.roles import ModelRole
from modm.serving.monitor import MonitorService


class MonitorServer(MonitorService):
    async def __init__(
        self,
        config: dict,
        total_steps: int,
        large,
        small,
        *,
        small_tiers: tuple = (),
        deployment_names: dict[str, str] | None = None,
        profiled_s: dict[str, float] | None = None,
    ):
        """`small_tiers`: the handles of the tiers after 'small' (small2, ...); `deployment_names`: each pool's
        deployment by pool name ('large', 'small', 'small2', ...); `profiled_s`: configured batch-1 latencies."""
        handles = {ModelRole.LARGE.value: large, ModelRole.SMALL.value: small}
        handles.update({f"{ModelRole.SMALL.value}{i + 2}": handle for i, handle in enumerate(small_tiers)})
        self.deployment_names = deployment_names or {"large": "LargeModel", "small": "SmallModel"}
        self.app_name = serve.get_replica_context().app_name
        pools = {ModelRole.LARGE: HandleProxy(large), ModelRole.SMALL: HandleProxy(small)}
        tiers = {name: HandleProxy(h) for name, h in handles.items() if name != ModelRole.LARGE.value}
        super().__init__(
            MonitorConfig.model_validate(config),
            total_steps,
            pools,
            self._publish,
            tiers=tiers,
            profiled_s=profiled_s,
            metrics=MonitorMetrics(),
        )
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def _publish(self, allocation: TieredAllocation) -> None:
        targets = {ModelRole.LARGE.value: allocation.large, **allocation.replicas()}
        for name, replicas in targets.items():
            await asyncio.to_thread(publish_target, self.app_name, self.deployment_names[name], replicas)

    def check_health(self) -> None:
        if self._task.done():
            raise RuntimeError(f"monitor loop stopped: {self._task.exception()!r}")
