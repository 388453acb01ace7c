"""Admission control from an SLO estimate: refuse up front a request that would finish too late, and say when to
come back. Pure arithmetic on numbers the router already has: requests in flight on a model pool, the pool's
replicas, how many requests a replica runs as one batch, and the seconds of one request alone and of one full batch
on one replica (a replica that does not batch: max_batch 1)."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["AdmissionVerdict", "PoolLoad", "admit", "seconds_to_drain"]


@dataclass(frozen=True)
class PoolLoad:
    in_flight: int  # requests sent to the pool and not answered yet (queued or running)
    replicas: int  # replicas serving the pool, one request at a time each
    latency_s: float  # profiled seconds of one request alone on one replica
    max_batch: int = 1  # requests one replica runs as one batch
    full_batch_latency_s: float | None = (
        None  # seconds of one batch of max_batch requests (None: max_batch * latency_s)
    )

    def __post_init__(self) -> None:
        if not isinstance(self.in_flight, int) or self.in_flight < 0:
            raise ValueError(f"in_flight must be a non-negative integer, got {self.in_flight!r}")
        if not isinstance(self.replicas, int) or self.replicas < 1:
            raise ValueError(f"replicas must be a positive integer, got {self.replicas!r}")
        if not (isinstance(self.latency_s, (int, float)) and math.isfinite(self.latency_s) and self.latency_s > 0):
            raise ValueError(f"latency_s must be a positive finite number, got {self.latency_s!r}")
        if not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, got {self.max_batch!r}")
        full = self.full_batch_latency_s
        if full is not None and not (isinstance(full, (int, float)) and math.isfinite(full) and full > 0):
            raise ValueError(f"full_batch_latency_s must be a positive finite number, got {full!r}")

    def batch_latency_s(self, size: int) -> float:
        """Seconds of one batch of `size` (1..max_batch) requests: linear between one request alone and a full
        batch."""
        if self.max_batch == 1:
            return self.latency_s
        full = self.max_batch * self.latency_s if self.full_batch_latency_s is None else self.full_batch_latency_s
        return self.latency_s + (full - self.latency_s) * (size - 1) / (self.max_batch - 1)

    def expected_latency_s(self) -> float:
        """Seconds until a newly sent request is answered: the requests ahead of it on its replica run in full
        batches, then its own batch (with those that remain ahead)."""
        ahead = self.in_flight // self.replicas
        full_rounds, in_own_batch = divmod(ahead, self.max_batch)
        return full_rounds * self.batch_latency_s(self.max_batch) + self.batch_latency_s(in_own_batch + 1)

    def capacity(self, bound_s: float) -> int:
        """Most requests the pool can hold (this one included) with each still answered within bound_s. At least
        one round of full batches: a bound shorter than one batch must not shut an idle pool."""
        rounds = math.floor(bound_s / self.batch_latency_s(self.max_batch))
        return max(rounds, 1) * self.max_batch * self.replicas


@dataclass(frozen=True)
class AdmissionVerdict:
    admitted: bool
    expected_latency_s: float  # of this request, had it been admitted
    retry_after_s: int  # whole seconds until it would be admitted (0 when admitted), for Retry-After


def seconds_to_drain(load: PoolLoad, requests: int) -> int:
    """Whole seconds (at least 1) until `requests` more requests of the pool have been answered."""
    if requests < 1:
        raise ValueError(f"requests must be at least 1, got {requests!r}")
    rounds = math.ceil(requests / (load.replicas * load.max_batch))
    return max(1, math.ceil(rounds * load.batch_latency_s(load.max_batch)))


def admit(load: PoolLoad, bound_s: float) -> AdmissionVerdict:
    """Admit a request to the pool iff it is expected to be answered within bound_s (the SLO or request timeout);
    otherwise Retry-After is the time for the excess requests ahead of it to drain."""
    if not (isinstance(bound_s, (int, float)) and math.isfinite(bound_s) and bound_s > 0):
        raise ValueError(f"bound_s must be a positive finite number, got {bound_s!r}")
    expected = load.expected_latency_s()
    excess = load.in_flight + 1 - load.capacity(bound_s)
    if excess <= 0:
        return AdmissionVerdict(admitted=True, expected_latency_s=expected, retry_after_s=0)
    return AdmissionVerdict(admitted=False, expected_latency_s=expected, retry_after_s=seconds_to_drain(load, excess))
