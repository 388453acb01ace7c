"""LatentCache: NIRVANA's cache of the large model's intermediate latents (the `nirvana` baseline mode).

One replica holds, per namespace (tenant, image size, T), a `modm.cache.LatentCache`: prompt embeddings in a
faiss index and, per cached prompt, its latents after steps 5..25, with LCBFU eviction. NIRVANA keeps them in
memory, so this cache starts empty on every (re)start; `cache.capacity` counts (prompt, k) entries per namespace.
Latents travel as float16 numpy arrays (bf16 has no numpy type; fp16 keeps SD3/FLUX latents' range).
"""

from __future__ import annotations

import numpy as np

from modm.cache.latent_cache import LatentCache
from modm.config import CacheConfig
from modm.policy import NIRVANA_K_CHOICES, KTable


class LatentCacheServer:
    def __init__(self, config: dict, dim: int, total_steps: int):
        self.config = CacheConfig.model_validate(config)
        self.dim = dim
        self.k_table = KTable.nirvana(total_steps)
        self.capacity_prompts = self.config.capacity // len(NIRVANA_K_CHOICES)
        self.caches: dict[str, LatentCache] = {}
        self.admissions = 0

    def _cache(self, namespace: str) -> LatentCache:
        cache = self.caches.get(namespace)
        if cache is None:
            cache = self.caches[namespace] = LatentCache(
                self.dim, self.capacity_prompts, self.k_table, index_config=self.config
            )
        return cache

    def lookup(self, embedding: np.ndarray, namespace: str) -> dict:
        """NIRVANA's decision and, on a hit, the latents to resume from."""
        cache = self.caches.get(namespace)
        if cache is None:
            return {"hit": False, "score": None}
        decision, match = cache.lookup(embedding)
        if match is None:
            return {"hit": False, "score": decision.score}
        return {"hit": True, "score": decision.score, "k": decision.k, "latents": match.payload}

    def add(self, embedding: np.ndarray, namespace: str, latents: dict[int, np.ndarray]) -> int:
        prompt_id = self._cache(namespace).insert(embedding, {int(k): v for k, v in latents.items()})
        self.admissions += 1
        return prompt_id

    def stats(self) -> dict:
        return {
            "entries": sum(len(c) for c in self.caches.values()),
            "prompts": sum(len(c.prompts()) for c in self.caches.values()),
            "admissions": self.admissions,
            "hits": sum(c.hits for c in self.caches.values()),
            "evictions": sum(c.evicted_entries for c in self.caches.values()),
            "namespaces": len(self.caches),
        }
