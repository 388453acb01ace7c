"""Small, seeded workloads for the simulator tests: no model, no files unless a test writes them.

A module of its own (not conftest): `from conftest import ...` takes whichever conftest was imported first.
"""

from __future__ import annotations

import numpy as np

from modm.workload.config import ArrivalConfig, ArrivalKind
from modm.workload.trace import TraceRequest
from modm.sim import Workload


def clustered_embeddings(n: int, *, n_topics: int, dim: int = 64, noise: float = 0.02, seed: int = 0) -> np.ndarray:
    """Unit vectors around `n_topics` random directions: requests of one topic are near-duplicates (cosine ~0.98),
    requests of different topics are nearly orthogonal, so a warm cache hits within a topic."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_topics, dim))
    x = centres[rng.integers(n_topics, size=n)] / np.sqrt(dim) + noise * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def poisson_workload(n: int, rate_per_min: float, *, seed: int = 0, warm_up: int = 0) -> Workload:
    rng = np.random.default_rng(seed)
    offsets = np.cumsum(rng.exponential(60.0 / rate_per_min, size=n))
    trace = [TraceRequest(prompt=f"prompt {i}", source_row=i, warm_up=i < warm_up) for i in range(n)]
    return Workload.from_trace(
        "test", trace, ArrivalConfig(kind=ArrivalKind.POISSON, rate_per_min=rate_per_min), offsets
    )


def closed_loop_workload(n: int, concurrency: int) -> Workload:
    trace = [TraceRequest(prompt=f"prompt {i}", source_row=i) for i in range(n)]
    return Workload.from_trace(
        "test", trace, ArrivalConfig(kind=ArrivalKind.CLOSED_LOOP, concurrency=concurrency), None
    )
