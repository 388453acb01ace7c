"""One view of the load for several routers: requests in flight per model pool, summed over every router.

Each router counts the requests it has sent to each pool and not yet seen answered (its own, exact) and reports them
often to one `LoadBoard`, which answers the sum of the other routers' last reports. Between reports a router's view
of a pool is its own current count plus the others' as last answered (`pool_in_flight`): its own changes are seen at
once, the others' within a report interval. A router that stops reporting (it died, and its requests with it) drops
out of the sums when its report expires; a router whose last answer is older than it may trust (the board is
unreachable) falls back to its own counts, the view of a router alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["LoadBoard", "PeerLoad", "pool_in_flight"]


def _check_counts(in_flight: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(in_flight, Mapping):
        raise ValueError(f"in_flight must map pool names to counts, got {type(in_flight).__name__}")
    for pool, n in in_flight.items():
        if not isinstance(pool, str) or not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"in_flight must map pool names to non-negative integers, got {pool!r}: {n!r}")
    return dict(in_flight)


@dataclass(frozen=True)
class PeerLoad:
    """The other routers' requests in flight per pool, as the board summed them when it answered at `at` (the
    receiving router's monotonic clock)."""

    in_flight: Mapping[str, int]
    at: float


def pool_in_flight(own: int, peers: PeerLoad | None, pool: str, now: float, max_age_s: float) -> int:
    """Requests in flight on `pool` across the cluster, as a router sees it: its own count now plus the others'
    last answer, unless that answer is missing or older than `max_age_s` (then its own count alone)."""
    if not isinstance(own, int) or own < 0:
        raise ValueError(f"own must be a non-negative integer, got {own!r}")
    if peers is None or now - peers.at > max_age_s:
        return own
    return own + peers.in_flight.get(pool, 0)


@dataclass
class LoadBoard:
    """The routers' last reports, keyed by router id; each counts until its own expiry (`ttl_s` after it)."""

    _reports: dict[str, tuple[float, dict[str, int]]] = field(default_factory=dict)

    def report(self, router_id: str, in_flight: Mapping[str, int], ttl_s: float, now: float) -> dict[str, int]:
        """Record `router_id`'s counts (valid until now + ttl_s) and answer the sums of every other live router."""
        if not isinstance(router_id, str) or not router_id:
            raise ValueError(f"router_id must be a non-empty string, got {router_id!r}")
        if not (isinstance(ttl_s, (int, float)) and math.isfinite(ttl_s) and ttl_s > 0):
            raise ValueError(f"ttl_s must be a positive finite number, got {ttl_s!r}")
        self._reports[router_id] = (now + ttl_s, _check_counts(in_flight))
        return self.totals(now, excluding=router_id)

    def totals(self, now: float, excluding: str | None = None) -> dict[str, int]:
        """Requests in flight per pool over the live routers (all of them, or all but `excluding`); expired
        reports are forgotten."""
        for router_id in [r for r, (expires, _) in self._reports.items() if expires < now]:
            del self._reports[router_id]
        out: dict[str, int] = {}
        for router_id, (_, counts) in self._reports.items():
            if router_id != excluding:
                for pool, n in counts.items():
                    out[pool] = out.get(pool, 0) + n
        return out

    def by_router(self, now: float) -> dict[str, dict[str, int]]:
        """Each live router's last report."""
        self.totals(now)
        return {router_id: dict(counts) for router_id, (_, counts) in self._reports.items()}
