"""The pipeline's backends in one process: the embedder, the image cache and NIRVANA's latent cache as async
services with the backend protocols' methods. The Serve deployments are these same services behind a handle
(deployments/embedder.py, cache_index.py, latent_cache.py); the model pools are `modm.generation.ModelService`."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from modm.cache import EntryNotFoundError, ImageCache
from modm.cache.follower import CacheFollower
from modm.cache.latent_cache import LatentCache
from modm.cache.records import Lookup, Match
from modm.config import CacheConfig
from modm.images import decode_png
from modm.policy import NIRVANA_K_CHOICES, KTable
from modm.serving.coalescing import Coalescer

if TYPE_CHECKING:  # the embedder's torch is not imported by the processes that only route or index
    from modm.embedding import Embedder

__all__ = ["CacheReaderService", "EmbedderService", "ImageCacheReadService", "ImageCacheService", "LatentCacheService"]


class EmbedderService:
    def __init__(self, embedder: Embedder, max_batch: int = 32):
        """`max_batch`: the most prompts one forward pass takes; concurrent calls share passes (`Coalescer`)."""
        self.embedder = embedder
        self._prompts = Coalescer(self.embed_texts, max_batch)

    async def embed_text(self, prompt: str) -> np.ndarray:
        """One prompt's (dim,) float32 embedding; the prompts of concurrent calls go through one forward pass."""
        return await self._prompts.submit(prompt)

    async def embed_texts(self, prompts: Sequence[str]) -> list[np.ndarray]:
        """One forward pass for several prompts, in a worker thread: the loop takes the next calls meanwhile (they
        form the next batch), which a pass run on the loop would hold back and split into small batches."""
        return list(await asyncio.to_thread(self.embedder.embed_text, list(prompts)))

    async def embed_for_cache(self, png: bytes, prompt: str) -> np.ndarray:
        vectors = await asyncio.to_thread(self.embedder.embed_for_cache, [decode_png(png)], [prompt])
        return vectors[0]

    def info(self) -> dict:
        return {"dim": self.embedder.dim, "retrieval": self.embedder.retrieval.value}


class ImageCacheReadService:
    """Lookups in MoDM's persistent image cache: over the writer's own ImageCache, or over a CacheFollower of it
    (a reader replica)."""

    def __init__(self, cache: ImageCache | CacheFollower):
        self.cache = cache

    async def query(self, embedding: np.ndarray, namespaces: list[str]) -> Match | None:
        return self.cache.query(embedding, namespaces)

    async def lookup(self, embedding: np.ndarray, namespaces: list[str], min_score: float) -> Lookup:
        """The best match, with its image when it scores at least `min_score` (a hit): a hit costs one call."""
        match = await self.query(embedding, namespaces)
        if match is None or match.score < min_score:
            return Lookup(match)
        return Lookup(match, await self.fetch_png(match.entry_id))

    async def get_png(self, entry_id: int) -> bytes:
        return self.cache.get_png(entry_id)

    async def fetch_png(self, entry_id: int) -> bytes | None:
        """The entry's image, or None when it was evicted since the query that found it (the pipeline then serves
        a miss instead of failing the request)."""
        try:
            return self.cache.get_png(entry_id)
        except EntryNotFoundError:
            return None

    async def png_in_scope(self, entry_id: int, namespaces: list[str]) -> bytes | None:
        try:
            if self.cache.get_entry(entry_id).tenant not in namespaces:
                return None
            return self.cache.get_png(entry_id)
        except EntryNotFoundError:
            return None

    async def cached_prompts(self, namespace: str) -> list[str]:
        """The prompts of the entries in `namespace` (the warm-up skips them)."""
        return sorted({e.prompt for e in self.cache.entries() if e.tenant == namespace})


class ImageCacheService(ImageCacheReadService):
    """MoDM's persistent image cache, served by its one owner (it holds the directory lock): lookups and
    admissions."""

    cache: ImageCache

    async def add(self, png: bytes, embedding: np.ndarray, prompt: str, tenant: str, source_model: str, k: int) -> int:
        # The write is fsync'd; keep it off the event loop so queries stay fast meanwhile.
        entry = await asyncio.to_thread(
            self.cache.add, png, embedding, prompt=prompt, tenant=tenant, source_model=source_model, k=k
        )
        return entry.id

    async def stats(self) -> dict:
        stats = self.cache.stats()
        return {
            "entries": len(self.cache),
            "admissions": stats.admissions,
            "evictions": stats.evictions,
            "queries": stats.queries,
        }


class CacheReaderService(ImageCacheReadService):
    """A reader replica of the image cache: lookups from a CacheFollower of the writer's directory (admissions go
    to the writer)."""

    cache: CacheFollower

    async def stats(self) -> dict:
        """The follower's view and lag (`modm.cache.follower.FollowerStats`)."""
        stats = dataclasses.asdict(self.cache.stats())
        del stats["directory"]
        return stats


class LatentCacheService:
    """NIRVANA's cache of the large model's intermediate latents: per namespace (tenant, image size, T) a
    `modm.cache.LatentCache` of prompt embeddings and, per cached prompt, its latents after steps 5..25, with
    LCBFU eviction. In memory, as NIRVANA keeps it: it starts empty; `cache.capacity` counts (prompt, k) entries
    per namespace. Latents are float16 numpy arrays (bf16 has no numpy type; fp16 keeps SD3/FLUX latents' range)."""

    def __init__(self, config: CacheConfig, dim: int, total_steps: int):
        self.config, self.dim = config, dim
        self.k_table = KTable.nirvana(total_steps)
        self.capacity_prompts = config.capacity // len(NIRVANA_K_CHOICES)
        self.caches: dict[str, LatentCache] = {}
        self.admissions = 0

    def _cache(self, namespace: str) -> LatentCache:
        cache = self.caches.get(namespace)
        if cache is None:
            cache = self.caches[namespace] = LatentCache(
                self.dim, self.capacity_prompts, self.k_table, index_config=self.config
            )
        return cache

    async def lookup(self, embedding: np.ndarray, namespace: str) -> dict:
        """NIRVANA's decision and, on a hit, the latents to resume from."""
        cache = self.caches.get(namespace)
        if cache is None:
            return {"hit": False, "score": None}
        decision, match = cache.lookup(embedding)
        if match is None:
            return {"hit": False, "score": decision.score}
        return {"hit": True, "score": decision.score, "k": decision.k, "latents": match.payload}

    async def add(self, embedding: np.ndarray, namespace: str, latents: dict[int, np.ndarray]) -> int:
        prompt_id = self._cache(namespace).insert(embedding, {int(k): v for k, v in latents.items()})
        self.admissions += 1
        return prompt_id

    async def stats(self) -> dict:
        return {
            "entries": sum(len(c) for c in self.caches.values()),
            "prompts": sum(len(c.prompts()) for c in self.caches.values()),
            "admissions": self.admissions,
            "hits": sum(c.hits for c in self.caches.values()),
            "evictions": sum(c.evicted_entries for c in self.caches.values()),
            "namespaces": len(self.caches),
        }
