"""Which waiting request goes to which idle replica: the router's rules as a pure function of counts.

- throughput mode: misses -> large replicas, hits -> small replicas (large ones take hits only when the
  allocation has no small replica at all, as MoDM's multinode scheduler does).
- quality mode: misses -> large; a hit -> an idle large replica if there is one (after the misses), else small.
  This is MoDM's worker loop: a large worker takes a miss if one waits, else a hit.
- large-only (vanilla, NIRVANA): one FIFO queue, every replica runs the large model.

Queues are FIFO, so only counts matter: the caller pops that many requests from each queue front. Pure and
Ray-free so that the Ray router can use the same rules (candidate for modm/policy/routing.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from modm.config.schema import MonitorMode, SystemMode

__all__ = ["Dispatch", "QueueKind", "RoutingPolicy", "plan_dispatch", "queue_for"]


class RoutingPolicy(str, Enum):
    THROUGHPUT = "throughput"
    QUALITY = "quality"
    LARGE_ONLY = "large-only"

    @classmethod
    def for_system(cls, system: SystemMode, monitor: MonitorMode) -> "RoutingPolicy":
        if system is not SystemMode.MODM:
            return cls.LARGE_ONLY
        return cls.QUALITY if monitor is MonitorMode.QUALITY else cls.THROUGHPUT


class QueueKind(str, Enum):
    MISS = "miss"      # waits for a large replica (full generation)
    HIT = "hit"        # waits for a refining replica
    SHARED = "shared"  # large-only systems: one queue in arrival order


def queue_for(policy: RoutingPolicy, hit: bool) -> QueueKind:
    if policy is RoutingPolicy.LARGE_ONLY:
        return QueueKind.SHARED
    return QueueKind.HIT if hit else QueueKind.MISS


@dataclass(frozen=True)
class Dispatch:
    """How many requests leave each queue front, and for which idle replicas."""

    misses_to_large: int = 0  # for LARGE_ONLY: requests of the shared queue to large replicas
    hits_to_large: int = 0
    hits_to_small: int = 0


def plan_dispatch(policy: RoutingPolicy, *, idle_large: int, idle_small: int, waiting_misses: int,
                  waiting_hits: int, small_replicas: int) -> Dispatch:
    """Match waiting requests to idle replicas. `small_replicas` counts every replica assigned the small model
    (busy, idle or loading it); with none, throughput mode lets large replicas refine hits."""
    for name, value in (("idle_large", idle_large), ("idle_small", idle_small), ("waiting_misses", waiting_misses),
                        ("waiting_hits", waiting_hits), ("small_replicas", small_replicas)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    misses = min(idle_large, waiting_misses)
    if policy is RoutingPolicy.LARGE_ONLY:
        return Dispatch(misses_to_large=misses)
    spare_large = idle_large - misses
    if policy is RoutingPolicy.QUALITY or small_replicas == 0:
        hits_large = min(spare_large, waiting_hits)
    else:
        hits_large = 0
    hits_small = min(idle_small, waiting_hits - hits_large)
    return Dispatch(misses_to_large=misses, hits_to_large=hits_large, hits_to_small=hits_small)
