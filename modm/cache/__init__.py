"""The persistent image cache: final images, their embeddings and metadata, a per-tenant faiss index.

Ray-free and model-free; callers pass L2-normalised embeddings in.
"""

from modm.cache.admission import should_admit
from modm.cache.errors import (
    CacheClosedError,
    CacheCorruptError,
    CacheDimensionError,
    CacheError,
    CacheLockedError,
    EntryNotFoundError,
)
from modm.cache.image_cache import CacheStats, ImageCache, NamespaceStats
from modm.cache.index import IndexKind
from modm.cache.records import CacheEntry, Match, NewEntry
from modm.cache.warm import WarmReport, prompt_for_image, warm_from_folder

__all__ = [
    "CacheClosedError", "CacheCorruptError", "CacheDimensionError", "CacheEntry", "CacheError",
    "CacheLockedError", "CacheStats", "EntryNotFoundError", "ImageCache", "IndexKind", "Match",
    "NamespaceStats", "NewEntry", "WarmReport", "prompt_for_image", "should_admit", "warm_from_folder",
]
