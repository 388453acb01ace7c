"""The monitor's window counts (R, H, P(k)), counted at arrival.

MoDM's scheduler counts a request when it arrives and its hit/miss when it is decided, before any generation. Counting
at completion instead makes R the *served* rate and biases H toward hits (they finish sooner), so under overload the
monitor would move replicas the wrong way exactly when misses back up. Hence:

- `arrived()` for every request that reaches the retrieval stage, whether it is later rejected (429/503), times out
  or fails;
- `decided(hit, k)` when the hit/miss decision is made, before generation.

H = hits / decided requests (a request that timed out before its decision says nothing about the mix), and P(k) is
over hits. Routers keep one counter of the counts since their last report; the monitor merges the reports into one
counter per window and closes it into `WindowStats`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from modm.policy.monitor import WindowStats

__all__ = ["WindowCounter", "WindowCounts"]


@dataclass(frozen=True)
class WindowCounts:
    """Counts since the last take(): plain numbers, sent from routers to the monitor."""

    arrivals: int = 0
    decided: int = 0
    hits: int = 0
    k_counts: Mapping[int, int] = field(default_factory=dict)

    def __post_init__(self):
        if min(self.arrivals, self.decided, self.hits) < 0 or self.hits > self.decided:
            raise ValueError(f"bad window counts: {self}")
        if sum(self.k_counts.values()) != self.hits or any(n < 0 for n in self.k_counts.values()):
            raise ValueError(f"k counts {dict(self.k_counts)} do not add up to hits={self.hits}")

    def as_dict(self) -> dict:
        return {
            "arrivals": self.arrivals,
            "decided": self.decided,
            "hits": self.hits,
            "k_counts": {int(k): int(n) for k, n in self.k_counts.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> WindowCounts:
        return cls(
            arrivals=int(data["arrivals"]),
            decided=int(data["decided"]),
            hits=int(data["hits"]),
            k_counts={int(k): int(n) for k, n in data["k_counts"].items()},
        )


class WindowCounter:
    """Arrivals, decisions, hits and the k of each hit, until take() or close() starts a new window."""

    def __init__(self) -> None:
        self._arrivals = self._decided = self._hits = 0
        self._k: Counter[int] = Counter()

    def arrived(self) -> None:
        self._arrivals += 1

    def decided(self, hit: bool, k: int = 0) -> None:
        self._decided += 1
        if hit:
            self._hits += 1
            self._k[int(k)] += 1

    def merge(self, counts: WindowCounts) -> None:
        self._arrivals += counts.arrivals
        self._decided += counts.decided
        self._hits += counts.hits
        self._k.update({int(k): int(n) for k, n in counts.k_counts.items()})

    def peek(self) -> WindowCounts:
        return WindowCounts(self._arrivals, self._decided, self._hits, dict(self._k))

    def take(self) -> WindowCounts:
        """The counts so far; the counter starts over."""
        counts = self.peek()
        self.__init__()
        return counts

    def close(self, elapsed_s: float, total_steps: int) -> WindowStats:
        """R (per minute over `elapsed_s`), H and P(k) of the window; the counter starts over."""
        if elapsed_s <= 0:
            raise ValueError(f"elapsed_s must be positive, got {elapsed_s}")
        counts = self.take()
        return WindowStats(
            request_rate=counts.arrivals / elapsed_s * 60.0,
            hit_rate=counts.hits / counts.decided if counts.decided else 0.0,
            k_mix=dict(counts.k_counts),
            total_steps=total_steps,
        )
