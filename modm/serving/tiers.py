"""The small pool of a system with small-model tiers: one pool per tier, every call sent to the tier the monitor
chose (modm.policy.tiers). The router sets `tier` from the monitor's allocation; a request already sent finishes on
the tier that took it."""

from __future__ import annotations

from collections.abc import Mapping

from modm.serving.backends import ModelPool

__all__ = ["TieredPool", "routed_pool"]


class TieredPool:
    def __init__(self, pools: Mapping[str, ModelPool], tier: str | None = None):
        if not pools:
            raise ValueError("a tiered pool needs at least one tier")
        self.pools = dict(pools)
        self._tier = next(iter(self.pools)) if tier is None else tier
        self.tier = self._tier  # checked

    @property
    def tier(self) -> str:
        return self._tier

    @tier.setter
    def tier(self, name: str) -> None:
        if name not in self.pools:
            raise ValueError(f"unknown small-model tier {name!r}; tiers are {sorted(self.pools)}")
        self._tier = name

    def __getattr__(self, name: str):
        if name.startswith("_") or name == "pools":
            raise AttributeError(name)
        return getattr(self.pools[self._tier], name)  # looked up per call: the tier chosen now


def routed_pool(pool: ModelPool, tier: str | None) -> ModelPool:
    """The pool a request routed to small-model tier `tier` runs on: that tier's own, picked once at routing (retries
    included), so its answer names the model that served it; `pool` itself without tiers."""
    if isinstance(pool, TieredPool) and tier is not None:
        return pool.pools[tier]
    return pool
