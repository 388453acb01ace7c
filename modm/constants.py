"""Defaults, named with their units. Each can be overridden by an environment variable of the same name."""

import os


def _env(name: str, default, cast=float):
    raw = os.environ.get(name)
    return default if raw is None else cast(raw)


DEFAULT_TOTAL_STEPS = _env("MODM_DEFAULT_TOTAL_STEPS", 50, int)  # T in MoDM
DEFAULT_CACHE_CAPACITY = _env("MODM_DEFAULT_CACHE_CAPACITY", 10_000, int)
# Approximate search from this many entries of a namespace: exact search at 768-d costs ~1 ms per 10k entries.
DEFAULT_HNSW_MIN_ENTRIES = _env("MODM_DEFAULT_HNSW_MIN_ENTRIES", 10_000, int)
DEFAULT_LARGE_INDEX = "ivf"  # the approximate kind (ivf or hnsw): benchmarks/results/index_choice.json
DEFAULT_IVF_REFINE_K_FACTOR = 4.0  # IVF candidates re-ranked exactly per result (8 and 16 measured no better)
# Lists probed: 0 chooses 1.5 sqrt(nlist) (modm.cache.index.IvfParams.probes_for): 48 of the 1,024 lists of 100k
# entries, 96 of the 4,096 of 1M, the fewest with recall@1 >= 0.99 at each (benchmarks/results/index_choice.json).
DEFAULT_IVF_NPROBE = 0
DEFAULT_HNSW_M = 32
DEFAULT_HNSW_EF_SEARCH = 64  # recall@1 ~0.9 on near-duplicates (feasibility study)
DEFAULT_HNSW_EF_CONSTRUCTION = 40
DEFAULT_MONITOR_WINDOW_S = _env("MODM_DEFAULT_MONITOR_WINDOW_S", 180.0)
MAX_PROMPT_CHARS = _env("MODM_MAX_PROMPT_CHARS", 2000, int)
DEFAULT_TENANT = "default"  # the cache namespace of requests that name no tenant
