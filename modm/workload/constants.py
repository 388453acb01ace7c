"""Workload defaults, named with their units. Each can be overridden by an environment variable of the same name."""

from __future__ import annotations

import os

__all__ = [
    "DEFAULT_DIFFUSIONDB_START_ROW",
    "DEFAULT_MJHQ_CATEGORIES",
    "DEFAULT_SEED",
    "SLO_MULTIPLIERS",
    "env_override",
]


def env_override(name: str, default, cast=float):
    """`default`, unless the environment variable `name` is set (then that, cast)."""
    raw = os.environ.get(name)
    return default if raw is None else cast(raw)


# MoDM replays DiffusionDB sorted by timestamp from row 50,000 (`iloc[50000 - warm_up : 50000 + n]`).
DEFAULT_DIFFUSIONDB_START_ROW = env_override("LOADGEN_DIFFUSIONDB_START_ROW", 50_000, int)
# MJHQ-30K's meta_data.json is 10 category chunks of 3,000 prompts; MoDM takes the tail of each chunk.
DEFAULT_MJHQ_CATEGORIES = 10
DEFAULT_SEED = env_override("LOADGEN_SEED", 42, int)  # MoDM's np.random.seed(42)

# MoDM's SLOs: end-to-end latency within 2x and 4x the standalone large-model latency.
SLO_MULTIPLIERS: tuple[float, ...] = (2.0, 4.0)
