"""NIRVANA in the simulator: the serving app's `LatentCache` (modm/cache/latent_cache.py, LCBFU eviction),
addressed by request id. A request's prompt is cached under its own id; prompts prefilled before the run get ids
after the workload's. Resumed runs leave no new latents (as in MoDM's re-implementation)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from modm.cache.latent_cache import LatentCache
from modm.config.schema import CacheConfig
from modm.policy import NIRVANA_K_CHOICES, KTable, RetrievalDecision

__all__ = ["NirvanaLatentCache"]


class NirvanaLatentCache(LatentCache):
    """`LatentCache` over the workload's prompt embeddings (`embeddings[request]`), without payloads."""

    def __init__(
        self,
        embeddings: np.ndarray,
        capacity_prompts: int,
        k_table: KTable,
        k_choices: Sequence[int] = NIRVANA_K_CHOICES,
        *,
        index_config: CacheConfig | None = None,
        record_evictions: bool = False,
    ):
        super().__init__(
            embeddings.shape[1],
            capacity_prompts,
            k_table,
            k_choices,
            index_config=index_config,
            record_evictions=record_evictions,
        )
        self._embeddings = embeddings
        self._prefilled = 0

    def decide(self, request: int) -> RetrievalDecision:
        decision, _ = self.lookup(self._embeddings[request])
        return decision

    def complete(self, request: int, decision: RetrievalDecision, *, from_large_model: bool) -> None:
        if not decision.hit:
            self.insert(self._embeddings[request], prompt_id=request)

    def prefill(self, keys: np.ndarray) -> None:
        """Latents of prompts generated before the run; their ids follow the workload's request ids."""
        first_id = self._embeddings.shape[0] + self._prefilled
        for offset in range(keys.shape[0]):
            self.insert(keys[offset], prompt_id=first_id + offset)
        self._prefilled += keys.shape[0]
