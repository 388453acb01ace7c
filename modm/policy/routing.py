"""Which model pool serves a request, from the decision and the live queue state (MoDM §3.3).

Misses always go to the large model. In throughput mode hits go to the small model. In quality mode a hit goes to
an idle large replica when there is one (MoDM's large workers take hits when their miss queue is empty), else to the
small model. A pool with no replicas never receives work while the other has some.
"""

from __future__ import annotations

from dataclasses import dataclass
from modm.config.schema import MonitorMode
from modm.roles import ModelRole


@dataclass(frozen=True)
class PoolState:
    replicas: int  # running replicas of the pool's deployment
    in_flight: int  # requests sent to the pool and not yet answered

    @property
    def idle_replicas(self) -> int:
        return max(0, self.replicas - self.in_flight)


def route(hit: bool, mode: MonitorMode, large: PoolState, small: PoolState) -> ModelRole:
    if not hit:
        return ModelRole.LARGE
    if small.replicas == 0:
        return ModelRole.LARGE
    if mode is MonitorMode.QUALITY and large.idle_replicas > 0:
        return ModelRole.LARGE
    return ModelRole.SMALL
