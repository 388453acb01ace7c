"""A worker's workload from its config: trace -> session model -> this worker's shard -> send offsets."""

from __future__ import annotations

import numpy as np

from modm.workload.arrivals import arrival_offsets, shard, worker_rng
from modm.workload.config import WorkloadConfig
from modm.workload.readers import load_trace
from modm.workload.sessions import apply_session_model
from modm.workload.trace import TraceRequest

__all__ = ["prepare_workload"]


def prepare_workload(config: WorkloadConfig) -> tuple[list[TraceRequest], np.ndarray | None]:
    """The requests this worker sends and their send offsets (None for closed loop). Pure given the files."""
    trace = load_trace(config.trace)
    if config.sessions is not None:
        # The session model shapes the whole workload, so it takes the global seed: all workers see one population
        # of users and each sends its shard of it.
        trace = apply_session_model(trace, config.sessions, seed=config.seed)
    trace = shard(trace, config.n_workers, config.worker_id)
    rng = worker_rng(config.seed, config.n_workers, config.worker_id)
    return trace, arrival_offsets(config.arrival, trace, rng, n_workers=config.n_workers)
