"""The persistent image cache: final images, their embeddings and metadata, a per-tenant faiss index.

Ray-free and model-free; callers pass L2-normalised embeddings in::

    with ImageCache(config.cache, dim=embedder_dim) as cache:
        match = cache.query(text_embedding, namespaces=[tenant, "shared"])   # Match | None
        if match is not None:
            png = cache.get_png(match.entry_id)        # EntryNotFoundError if evicted since: a miss
        ...
        if should_admit(config.cache.admission, from_large_model=True, refined=False):
            cache.add(png_bytes, image_embedding, prompt=prompt, tenant=tenant, source_model="sd35-large", k=0)

The directory layout and the crash-safety argument are in `modm.cache.layout` and `modm.cache.journal`.
"""

from modm.policy.admission import should_admit  # the rule is policy; re-exported for cache users
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
from modm.cache.records import CacheEntry, Lookup, Match, NewEntry
from modm.cache.warm import (
    WarmReport,
    prompt_for_image,
    read_prompts,
    warm_from_folder,
)

__all__ = [
    "CacheClosedError",
    "CacheCorruptError",
    "CacheDimensionError",
    "CacheEntry",
    "CacheError",
    "CacheLockedError",
    "CacheStats",
    "EntryNotFoundError",
    "ImageCache",
    "IndexKind",
    "Lookup",
    "Match",
    "NamespaceStats",
    "NewEntry",
    "WarmReport",
    "prompt_for_image",
    "read_prompts",
    "should_admit",
    "warm_from_folder",
]
