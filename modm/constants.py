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
DEFAULT_IVF_REFINE_K_FACTOR = 4.0  # IVF-SQ8 candidates re-ranked exactly per result (16 measured no better)
# Lists probed of nlist (~4 sqrt(n)): at 100k entries (1,024 lists) the fewest with recall@1 >= 0.99 on every
# measured query set (random 768-d near-duplicates: 48 gives 0.995 at 0.49 ms, 40 gives 0.988; MiniLM prompts and
# world CLIP text->image pass at 32). A 1M namespace (4,096 lists) needs 80 for 0.992 (2.8 ms; 48: 0.970, 1.6 ms).
DEFAULT_IVF_NPROBE = 48
DEFAULT_HNSW_M = 32
DEFAULT_HNSW_EF_SEARCH = 64  # recall@1 ~0.9 on near-duplicates (feasibility study)
DEFAULT_HNSW_EF_CONSTRUCTION = 40
DEFAULT_MONITOR_WINDOW_S = _env("MODM_DEFAULT_MONITOR_WINDOW_S", 180.0)
MAX_PROMPT_CHARS = _env("MODM_MAX_PROMPT_CHARS", 2000, int)
DEFAULT_TENANT = "default"  # the cache namespace of requests that name no tenant
