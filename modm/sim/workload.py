"""Workloads for the simulator, built by modm.workload, as the load generator's are, so a simulated run and a
measured run see the same requests in the same order at the same offsets.

`build_workload` is `modm.workload.prepare.prepare_workload` for one worker; `workload_from_run` rebuilds the exact
workload of a recorded loadgen run (its run config is stored in the records file), which is what a
simulator-vs-measurement comparison needs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from modm.workload.arrivals import (
    arrival_offsets,
    fluctuating_offsets,
    poisson_offsets,
    sigmoid_ramp_offsets,
    worker_rng,
)
from modm.workload.config import ArrivalConfig, ArrivalKind, SessionConfig, TraceConfig, WorkloadConfig
from modm.workload.prepare import prepare_workload
from modm.workload.runs import load_run
from modm.workload.trace import TraceRequest

__all__ = ["Workload", "WorkloadFactory", "build_workload", "synthetic_workload", "workload_from_run"]


@dataclass(frozen=True)
class Workload:
    """Requests in send order. Open loop: `offsets_s[i]` is when request i arrives. Closed loop (offsets_s None):
    `concurrency` clients, each sending its next request when its previous one completes."""

    name: str
    n_requests: int
    warm_up: np.ndarray  # (n,) bool: excluded from every reported number
    offsets_s: np.ndarray | None
    concurrency: int = 1
    trace: list[TraceRequest] | None = None  # prompts and session labels; None for synthetic workloads
    arrival: ArrivalConfig | None = None

    def __post_init__(self):
        if self.warm_up.shape != (self.n_requests,):
            raise ValueError(f"warm_up has shape {self.warm_up.shape}, expected ({self.n_requests},)")
        if self.offsets_s is not None:
            if self.offsets_s.shape != (self.n_requests,):
                raise ValueError(f"offsets_s has shape {self.offsets_s.shape}, expected ({self.n_requests},)")
            if self.n_requests and (np.any(np.diff(self.offsets_s) < 0) or self.offsets_s[0] < 0):
                raise ValueError("arrival offsets must be non-negative and sorted")
        elif self.concurrency < 1:
            raise ValueError(f"a closed-loop workload needs concurrency >= 1, got {self.concurrency}")
        if self.trace is not None and len(self.trace) != self.n_requests:
            raise ValueError(f"trace has {len(self.trace)} requests, expected {self.n_requests}")

    @property
    def prompts(self) -> list[str] | None:
        return None if self.trace is None else [r.prompt for r in self.trace]

    @classmethod
    def from_trace(
        cls, name: str, trace: list[TraceRequest], arrival: ArrivalConfig, offsets_s: np.ndarray | None
    ) -> "Workload":
        return cls(
            name=name,
            n_requests=len(trace),
            warm_up=np.array([r.warm_up for r in trace], dtype=bool),
            offsets_s=None if offsets_s is None else np.asarray(offsets_s, dtype=np.float64),
            concurrency=arrival.concurrency,
            trace=trace,
            arrival=arrival,
        )


def build_workload(
    trace: TraceConfig,
    arrival: ArrivalConfig,
    *,
    sessions: SessionConfig | None = None,
    seed: int = 42,
    name: str = "sim",
) -> Workload:
    """The workload (reader, session model, arrival process) of a single load-generator worker."""
    config = WorkloadConfig(name=name, trace=trace, sessions=sessions, arrival=arrival, seed=seed)
    requests, offsets = prepare_workload(config)
    return Workload.from_trace(name, requests, arrival, offsets)


def workload_from_run(run_dir: str | Path) -> tuple[Workload, WorkloadConfig]:
    """The workload a recorded loadgen run sent (rebuilt from its stored run config and the trace file)."""
    raw = load_run(run_dir).metadata.get("config")
    if not raw:
        raise ValueError(f"{run_dir}: the records file carries no run config; cannot rebuild its workload")
    config = WorkloadConfig.from_run_config(raw)  # the client part (URL, masked API key) is not the simulator's
    requests, offsets = prepare_workload(config)
    return Workload.from_trace(config.name, requests, config.arrival, offsets), config


def synthetic_workload(
    n_requests: int, arrival: ArrivalConfig, *, warm_up: int = 0, seed: int = 42, name: str = "synthetic"
) -> Workload:
    """`n_requests` anonymous requests (for the parametric hit model, which needs no prompts)."""
    if n_requests <= 0 or not 0 <= warm_up < n_requests:
        raise ValueError(f"need n_requests > 0 and 0 <= warm_up < n_requests, got {n_requests}, {warm_up}")
    rng = worker_rng(seed, 1, 0)
    if arrival.kind is ArrivalKind.CLOSED_LOOP:
        offsets = None
    elif arrival.kind is ArrivalKind.POISSON:
        offsets = poisson_offsets(n_requests, arrival.rate_per_min, rng)
    elif arrival.kind is ArrivalKind.RAMP:
        offsets = sigmoid_ramp_offsets(n_requests, arrival.min_rate_per_min, arrival.max_rate_per_min)
    elif arrival.kind is ArrivalKind.FLUCTUATING:
        offsets = fluctuating_offsets(n_requests, arrival.rate_per_min, arrival.amplitude, arrival.period_s, rng)
    else:
        raise ValueError(f"a synthetic workload has no timestamps to {arrival.kind.value}; use a trace")
    warm = np.zeros(n_requests, dtype=bool)
    warm[:warm_up] = True
    return Workload(
        name=name,
        n_requests=n_requests,
        warm_up=warm,
        offsets_s=offsets,
        concurrency=arrival.concurrency,
        trace=None,
        arrival=arrival,
    )


class WorkloadFactory:
    """One request list (and its embeddings), replayed under many arrival processes and prefix lengths.

    Experiments compare systems on the same requests; a shorter experiment takes a prefix of the list, so the
    (expensive) embeddings are computed once for the longest one. `requests=None` makes synthetic workloads (for
    the parametric hit model).
    """

    def __init__(
        self,
        requests: list[TraceRequest] | None,
        embeddings: np.ndarray | None = None,
        *,
        seed: int = 42,
        default_warm_up: int = 0,
        default_requests: int | None = None,
        default_prefill: bool = False,
    ):
        if requests is not None and embeddings is not None and embeddings.shape[0] != len(requests):
            raise ValueError(f"{embeddings.shape[0]} embeddings for {len(requests)} requests")
        self.requests = requests
        self.embeddings = embeddings
        self.seed = seed
        self.default_warm_up = default_warm_up
        self.default_requests = default_requests
        self.default_prefill = default_prefill

    def __call__(
        self,
        arrival: ArrivalConfig,
        name: str,
        *,
        n_requests: int | None = None,
        warm_up: int | None = None,
        prefill: bool | None = None,
    ) -> tuple[Workload, np.ndarray | None, np.ndarray | None]:
        """(workload, its embeddings, prefill keys) for the first `warm_up + n_requests` requests. The first
        `warm_up` are sent first and excluded from reports or, with `prefill`, not sent at all: their embeddings
        come back as keys to warm the cache with before time 0 (MoDM's pre-cache)."""
        warm_up = self.default_warm_up if warm_up is None else warm_up
        prefill = self.default_prefill if prefill is None else prefill
        n_requests = self.default_requests if n_requests is None else n_requests
        if self.requests is None:
            if n_requests is None:
                raise ValueError("a synthetic workload needs n_requests")
            return (
                synthetic_workload(warm_up + n_requests, arrival, warm_up=warm_up, seed=self.seed, name=name),
                None,
                None,
            )
        total = len(self.requests) if n_requests is None else warm_up + n_requests
        if total > len(self.requests) or warm_up >= total:
            raise ValueError(f"{warm_up} warm-up + {n_requests} requests asked of a list of {len(self.requests)}")
        first = warm_up if prefill else 0
        requests = [replace(r, warm_up=i < warm_up) for i, r in enumerate(self.requests[first:total], first)]
        offsets = arrival_offsets(arrival, requests, worker_rng(self.seed, 1, 0), n_workers=1)
        embeddings = None if self.embeddings is None else self.embeddings[first:total]
        keys = None if self.embeddings is None or not prefill else self.embeddings[:warm_up]
        return Workload.from_trace(name, requests, arrival, offsets), embeddings, keys
