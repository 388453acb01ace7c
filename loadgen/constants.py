"""Load-generator defaults, named with their units. Each can be overridden by an environment variable of the same
name."""

from __future__ import annotations

import os

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_DIFFUSIONDB_START_ROW",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_MAX_CONSECUTIVE_FAILURES",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_MJHQ_CATEGORIES",
    "DEFAULT_REFERENCE_PROBES",
    "DEFAULT_REQUEST_TIMEOUT_S",
    "DEFAULT_SEED",
    "DEFAULT_STATS_POLL_PERIOD_S",
    "SLO_MULTIPLIERS",
]


def _env(name: str, default, cast=float):
    raw = os.environ.get(name)
    return default if raw is None else cast(raw)


# MoDM replays DiffusionDB sorted by timestamp from row 50,000 (`iloc[50000 - warm_up : 50000 + n]`).
DEFAULT_DIFFUSIONDB_START_ROW = _env("LOADGEN_DIFFUSIONDB_START_ROW", 50_000, int)
# MJHQ-30K's meta_data.json is 10 category chunks of 3,000 prompts; MoDM takes the tail of each chunk.
DEFAULT_MJHQ_CATEGORIES = 10
DEFAULT_SEED = _env("LOADGEN_SEED", 42, int)  # MoDM's np.random.seed(42)
DEFAULT_IMAGE_SIZE = "256x256"  # the CPU tiny zoo; GPU runs pass 1024x1024

# A request that takes longer than this is recorded as a timeout; the run never waits on it further.
DEFAULT_REQUEST_TIMEOUT_S = _env("LOADGEN_REQUEST_TIMEOUT_S", 600.0)
DEFAULT_CONNECT_TIMEOUT_S = _env("LOADGEN_CONNECT_TIMEOUT_S", 10.0)
# Open-loop arrivals beyond this many outstanding requests wait on the client (their latency includes the wait).
DEFAULT_MAX_IN_FLIGHT = _env("LOADGEN_MAX_IN_FLIGHT", 1024, int)
# This many timeouts/connection failures in a row means the server stopped answering: stop sending.
DEFAULT_MAX_CONSECUTIVE_FAILURES = _env("LOADGEN_MAX_CONSECUTIVE_FAILURES", 20, int)
DEFAULT_STATS_POLL_PERIOD_S = _env("LOADGEN_STATS_POLL_PERIOD_S", 5.0)
DEFAULT_REFERENCE_PROBES = _env("LOADGEN_REFERENCE_PROBES", 3, int)

# MoDM's SLOs: end-to-end latency within 2x and 4x the standalone large-model latency.
SLO_MULTIPLIERS: tuple[float, ...] = (2.0, 4.0)
