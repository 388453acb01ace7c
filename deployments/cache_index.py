"""CacheIndex: the owner of the persistent image cache (one replica: it holds the directory lock)."""

from __future__ import annotations

import asyncio

import numpy as np

from modm.cache import EntryNotFoundError, ImageCache
from modm.config import CacheConfig


class CacheIndexServer:
    def __init__(self, config: dict, dim: int):
        self.cache = ImageCache(CacheConfig.model_validate(config), dim)

    def query(self, embedding: np.ndarray, namespaces: list[str]) -> dict | None:
        match = self.cache.query(embedding, namespaces)
        return None if match is None else {"entry_id": match.entry_id, "score": match.score}

    def get_png(self, entry_id: int) -> bytes:
        return self.cache.get_png(entry_id)

    def fetch_png(self, entry_id: int) -> bytes | None:
        """The entry's image, or None when it was evicted since the query that found it (the router then serves
        a miss instead of failing the request)."""
        try:
            return self.cache.get_png(entry_id)
        except EntryNotFoundError:
            return None

    def png_in_scope(self, entry_id: int, namespaces: list[str]) -> bytes | None:
        """The entry's image if it is live and in one of `namespaces` (what its tenant may read), else None."""
        try:
            if self.cache.get_entry(entry_id).tenant not in namespaces:
                return None
            return self.cache.get_png(entry_id)
        except EntryNotFoundError:
            return None

    async def add(self, png: bytes, embedding: np.ndarray, prompt: str, tenant: str, source_model: str, k: int) -> int:
        # The write is fsync'd; keep it off the event loop so queries stay fast meanwhile.
        entry = await asyncio.to_thread(
            self.cache.add, png, embedding, prompt=prompt, tenant=tenant, source_model=source_model, k=k
        )
        return entry.id

    def cached_prompts(self, namespace: str) -> list[str]:
        """The prompts of the entries in `namespace` (the warm-up skips them)."""
        return sorted({e.prompt for e in self.cache.entries() if e.tenant == namespace})

    def stats(self) -> dict:
        stats = self.cache.stats()
        return {
            "entries": len(self.cache),
            "admissions": stats.admissions,
            "evictions": stats.evictions,
            "queries": stats.queries,
        }

    def check_health(self) -> None:
        self.cache.stats()  # raises once the cache is closed or broken
