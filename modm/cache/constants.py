"""Defaults of the image cache, named with their units. Each can be overridden by an environment variable."""

import os


def _env(name: str, default, cast=float):
    raw = os.environ.get(name)
    return default if raw is None else cast(raw)


# On-disk format. Bump FORMAT_VERSION whenever the layout or the parquet schema changes.
FORMAT_NAME = "modm-image-cache"
FORMAT_VERSION = 1
MANIFEST_FILE = "modm-cache.json"
LOCK_FILE = "lock"
IMAGES_DIR = "images"
JOURNAL_DIR = "journal"
SNAPSHOTS_DIR = "snapshots"
TMP_SUFFIX = ".tmp"
ID_DIGITS = 12  # zero-padded ids, so `ls` lists images and segments in FIFO order

# An HNSW index that has accumulated this fraction of tombstones (evicted vectors it cannot remove) is rebuilt.
TOMBSTONE_REBUILD_FRACTION = _env("MODM_CACHE_TOMBSTONE_REBUILD_FRACTION", 0.25)
# An HNSW namespace goes back to exact search only below (1 - this) * hnsw_min_entries, so a namespace that
# hovers at the threshold does not rebuild an HNSW graph on every admission.
HNSW_HYSTERESIS_FRACTION = _env("MODM_CACHE_HNSW_HYSTERESIS_FRACTION", 0.1)
# Callers L2-normalise embeddings; a norm further than this from 1 is a caller bug (cosine would be wrong).
EMBEDDING_NORM_TOLERANCE = _env("MODM_CACHE_EMBEDDING_NORM_TOLERANCE", 1e-2)
# Images embedded per embed_fn call when warming the cache from a folder.
WARM_BATCH_SIZE = _env("MODM_CACHE_WARM_BATCH_SIZE", 32, int)
# A journal snapshot is written once the journal holds this fraction of the live entries (and compact_every).
JOURNAL_COMPACTION_FRACTION = _env("MODM_CACHE_JOURNAL_COMPACTION_FRACTION", 0.25)
# Threads that write (and fsync) the PNGs of one group commit in parallel.
PNG_WRITE_THREADS = _env("MODM_CACHE_PNG_WRITE_THREADS", 8, int)
