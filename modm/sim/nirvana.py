"""NIRVANA's approximate cache as MoDM's re-implementation runs it (serving_system_N.py), in memory.

- A miss runs the large model for all T steps and leaves latents after steps 5, 10, 15, 20, 25: five entries
  (prompt, k), each with score f * k and f = 0 at insertion.
- Retrieval is text->text: top-1 over the cached prompts' embeddings (the live cache's `NamespaceIndex`), the
  cosine mapped to a largest allowed k by NIRVANA's strict table (`KTable.nirvana()`); the hit resumes from the
  prompt's remaining entry with the largest k_i <= that k (a miss if none is left), and that entry's f grows by 1.
- LCBFU eviction: with no room for five more entries, pop the lowest-score entries (ties: oldest prompt first,
  then smaller k) until some prompt has lost all of its entries; that prompt leaves the index.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

from modm.cache.constants import HNSW_HYSTERESIS_FRACTION, TOMBSTONE_REBUILD_FRACTION
from modm.cache.index import NamespaceIndex
from modm.config.schema import CacheConfig
from modm.policy import NIRVANA_K_CHOICES, KTable, RetrievalDecision

__all__ = ["NirvanaLatentCache"]


class NirvanaLatentCache:
    """Latents of up to `capacity_prompts` prompts (`capacity_prompts * len(k_choices)` entries)."""

    def __init__(self, embeddings: np.ndarray, capacity_prompts: int, k_table: KTable,
                 k_choices: Sequence[int] = NIRVANA_K_CHOICES, *, index_config: CacheConfig | None = None,
                 record_evictions: bool = False):
        if capacity_prompts <= 0:
            raise ValueError(f"NIRVANA cache capacity must be positive, got {capacity_prompts}")
        self.k_choices = tuple(sorted(k_choices))
        if not self.k_choices or self.k_choices[0] <= 0 or self.k_choices[-1] >= k_table.total_steps:
            raise ValueError(f"k_choices must lie in (0, {k_table.total_steps}), got {list(k_choices)}")
        index_config = index_config or CacheConfig()
        self._embeddings = embeddings
        self._index = NamespaceIndex(
            embeddings.shape[1], hnsw_min_entries=index_config.hnsw_min_entries,
            hnsw_exit_entries=int(index_config.hnsw_min_entries * (1.0 - HNSW_HYSTERESIS_FRACTION)),
            hnsw_m=index_config.hnsw_m, hnsw_ef_search=index_config.hnsw_ef_search,
            hnsw_ef_construction=index_config.hnsw_ef_construction,
            tombstone_rebuild_fraction=TOMBSTONE_REBUILD_FRACTION)
        self.k_table = k_table
        self.capacity_entries = capacity_prompts * len(self.k_choices)
        self._frequency: dict[int, dict[int, int]] = {}  # prompt (request id) -> {k: f}, live entries only
        self._order: dict[int, int] = {}                 # prompt -> insertion sequence (the heap's tie-break)
        self._heap: list[tuple[int, int, int, int]] = []  # (f*k, sequence, k, prompt); stale items skipped
        self._entries = 0
        self._next_sequence = 0
        self._prefilled = 0
        self.evicted_entries = 0
        self.eviction_log: list[tuple[int, int]] | None = [] if record_evictions else None

    def __len__(self) -> int:
        """Live (prompt, k) entries."""
        return self._entries

    def prompts(self) -> list[int]:
        return list(self._frequency)

    def entries_of(self, prompt: int) -> dict[int, int]:
        """{k: f} of a cached prompt's remaining entries ({} if not cached)."""
        return dict(self._frequency.get(prompt, {}))

    def decide(self, request: int) -> RetrievalDecision:
        if not self._frequency:
            return RetrievalDecision.miss()
        scores, ids = self._index.search(self._embeddings[request:request + 1])
        score, prompt = float(scores[0]), int(ids[0])
        allowed = self.k_table.decide(score)
        if not allowed.hit:
            return allowed
        entries = self._frequency[prompt]
        usable = [k for k in entries if k <= allowed.k]
        if not usable:
            return RetrievalDecision.miss(score)
        k = max(usable)
        entries[k] += 1
        heapq.heappush(self._heap, (entries[k] * k, self._order[prompt], k, prompt))
        return RetrievalDecision(hit=True, k=k, strength=1.0 - k / self.k_table.total_steps, score=score)

    def complete(self, request: int, decision: RetrievalDecision, *, from_large_model: bool) -> None:
        if decision.hit:
            return  # a resumed run from step k leaves no new latents in this re-implementation
        self._insert(request, self._embeddings[request:request + 1])

    def prefill(self, keys: np.ndarray) -> None:
        """Latents of prompts generated before the run; their ids follow the workload's request ids."""
        first_id = self._embeddings.shape[0] + self._prefilled
        for offset in range(keys.shape[0]):
            self._insert(first_id + offset, np.ascontiguousarray(keys[offset:offset + 1], dtype=np.float32))
        self._prefilled += keys.shape[0]

    def _insert(self, prompt: int, key: np.ndarray) -> None:
        while self._entries + len(self.k_choices) > self.capacity_entries and self._entries:
            self._evict_one_prompt()
        sequence = self._next_sequence
        self._next_sequence += 1
        self._order[prompt] = sequence
        self._frequency[prompt] = {k: 0 for k in self.k_choices}
        for k in self.k_choices:
            heapq.heappush(self._heap, (0, sequence, k, prompt))
        self._entries += len(self.k_choices)
        self._index.add(np.array([prompt], dtype=np.int64), key)

    def _evict_one_prompt(self) -> None:
        """Pop lowest-score entries until one prompt has none left; that prompt leaves the index."""
        while self._heap:
            score, _, k, prompt = heapq.heappop(self._heap)
            entries = self._frequency.get(prompt)
            if entries is None or k not in entries or entries[k] * k != score:
                continue  # stale: the entry was evicted or retrieved since this item was pushed
            del entries[k]
            self._entries -= 1
            self.evicted_entries += 1
            if self.eviction_log is not None:
                self.eviction_log.append((prompt, k))
            if not entries:
                del self._frequency[prompt], self._order[prompt]
                self._index.remove([prompt])
                return
