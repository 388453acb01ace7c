"""NIRVANA's approximate cache (the baseline MoDM compares against), as MoDM's re-implementation runs it
(serving_system_N.py), in memory.

- A miss runs the large model for all T steps and leaves its latents after steps k in `k_choices` (5, 10, ..., 25):
  one entry (prompt, k) each, scored f * k with f = 0 at insertion.
- Retrieval is text->text: top-1 over the cached prompts' embeddings, the cosine mapped to a largest allowed k by
  NIRVANA's strict table (`KTable.nirvana()`); the hit resumes from the prompt's remaining entry with the largest
  k_i <= that k (a miss if none is left), and that entry's f grows by 1.
- LCBFU eviction: with no room for a new prompt's entries, pop the lowest-score entries (ties: oldest prompt
  first, then smaller k) until some prompt has lost all of its entries; that prompt leaves the index.

Each entry may carry a payload (the serving app stores the latent tensor; the simulator stores nothing). An
evicted entry's payload is dropped with it.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modm.cache.constants import HNSW_HYSTERESIS_FRACTION, TOMBSTONE_REBUILD_FRACTION
from modm.cache.index import NamespaceIndex
from modm.config.schema import CacheConfig
from modm.policy import NIRVANA_K_CHOICES, KTable, RetrievalDecision

__all__ = ["LatentCache", "LatentMatch"]


@dataclass(frozen=True)
class LatentMatch:
    """A hit's entry: the cached prompt to resume from and the payload stored for the granted k."""

    prompt_id: int
    payload: Any


class LatentCache:
    """Latents of up to `capacity_prompts` prompts (`capacity_prompts * len(k_choices)` entries)."""

    def __init__(
        self,
        dim: int,
        capacity_prompts: int,
        k_table: KTable,
        k_choices: Sequence[int] = NIRVANA_K_CHOICES,
        *,
        index_config: CacheConfig | None = None,
        record_evictions: bool = False,
    ):
        if capacity_prompts <= 0:
            raise ValueError(f"NIRVANA cache capacity must be positive, got {capacity_prompts}")
        self.k_choices = tuple(sorted(k_choices))
        if not self.k_choices or self.k_choices[0] <= 0 or self.k_choices[-1] >= k_table.total_steps:
            raise ValueError(f"k_choices must lie in (0, {k_table.total_steps}), got {list(k_choices)}")
        index_config = index_config or CacheConfig()
        self._index = NamespaceIndex(
            dim,
            hnsw_min_entries=index_config.hnsw_min_entries,
            hnsw_exit_entries=int(index_config.hnsw_min_entries * (1.0 - HNSW_HYSTERESIS_FRACTION)),
            hnsw_m=index_config.hnsw_m,
            hnsw_ef_search=index_config.hnsw_ef_search,
            hnsw_ef_construction=index_config.hnsw_ef_construction,
            tombstone_rebuild_fraction=TOMBSTONE_REBUILD_FRACTION,
        )
        self.dim = dim
        self.k_table = k_table
        self.capacity_entries = capacity_prompts * len(self.k_choices)
        self._frequency: dict[int, dict[int, int]] = {}  # prompt id -> {k: f}, live entries only
        self._payloads: dict[tuple[int, int], Any] = {}  # (prompt id, k) -> payload, live entries only
        self._order: dict[int, int] = {}  # prompt id -> insertion sequence (the heap's tie-break)
        self._heap: list[tuple[int, int, int, int]] = []  # (f*k, sequence, k, prompt id); stale items skipped
        self._entries = 0
        self._next_sequence = 0
        self._next_prompt_id = 0
        self.hits = 0
        self.evicted_entries = 0
        self.eviction_log: list[tuple[int, int]] | None = [] if record_evictions else None

    def __len__(self) -> int:
        """Live (prompt, k) entries."""
        return self._entries

    def __contains__(self, prompt_id: int) -> bool:
        return prompt_id in self._frequency

    def prompts(self) -> list[int]:
        return list(self._frequency)

    def entries_of(self, prompt_id: int) -> dict[int, int]:
        """{k: f} of a cached prompt's remaining entries ({} if not cached)."""
        return dict(self._frequency.get(prompt_id, {}))

    def lookup(self, key: np.ndarray) -> tuple[RetrievalDecision, LatentMatch | None]:
        """NIRVANA's decision for a query embedding (1 x dim, L2-normalised). A hit counts as a use of the entry."""
        if not self._frequency:
            return RetrievalDecision.miss(), None
        scores, ids = self._index.search(self._as_row(key))
        score, prompt_id = float(scores[0]), int(ids[0])
        allowed = self.k_table.decide(score)
        if not allowed.hit:
            return allowed, None
        entries = self._frequency[prompt_id]
        usable = [k for k in entries if k <= allowed.k]
        if not usable:
            return RetrievalDecision.miss(score), None
        k = max(usable)
        entries[k] += 1
        self.hits += 1
        heapq.heappush(self._heap, (entries[k] * k, self._order[prompt_id], k, prompt_id))
        decision = RetrievalDecision(hit=True, k=k, strength=1.0 - k / self.k_table.total_steps, score=score)
        return decision, LatentMatch(prompt_id, self._payloads.get((prompt_id, k)))

    def insert(
        self, key: np.ndarray, payloads: Mapping[int, Any] | None = None, *, prompt_id: int | None = None
    ) -> int:
        """Cache a fully generated prompt: one entry per k in k_choices, with payloads[k] if given. Returns the
        prompt's id (`prompt_id`, or the next free one)."""
        if payloads is not None and set(payloads) != set(self.k_choices):
            raise ValueError(f"payloads must cover k in {list(self.k_choices)} exactly, got {sorted(payloads)}")
        row = self._as_row(key)
        if prompt_id is None:
            prompt_id = self._next_prompt_id
        if prompt_id in self._frequency:
            raise ValueError(f"prompt id {prompt_id} is already cached")
        self._next_prompt_id = max(self._next_prompt_id, prompt_id + 1)
        while self._entries + len(self.k_choices) > self.capacity_entries and self._entries:
            self._evict_one_prompt()
        sequence = self._next_sequence
        self._next_sequence += 1
        self._order[prompt_id] = sequence
        self._frequency[prompt_id] = {k: 0 for k in self.k_choices}
        for k in self.k_choices:
            heapq.heappush(self._heap, (0, sequence, k, prompt_id))
            if payloads is not None:
                self._payloads[(prompt_id, k)] = payloads[k]
        self._entries += len(self.k_choices)
        self._index.add(np.array([prompt_id], dtype=np.int64), row)
        return prompt_id

    def _as_row(self, key: np.ndarray) -> np.ndarray:
        row = np.ascontiguousarray(np.asarray(key, dtype=np.float32).reshape(1, -1))
        if row.shape[1] != self.dim:
            raise ValueError(f"embedding has {row.shape[1]} dimensions, the cache holds {self.dim}")
        return row

    def _evict_one_prompt(self) -> None:
        """Pop lowest-score entries until one prompt has none left; that prompt leaves the index."""
        while self._heap:
            score, _, k, prompt_id = heapq.heappop(self._heap)
            entries = self._frequency.get(prompt_id)
            if entries is None or k not in entries or entries[k] * k != score:
                continue  # stale: the entry was evicted or retrieved since this item was pushed
            del entries[k]
            self._payloads.pop((prompt_id, k), None)
            self._entries -= 1
            self.evicted_entries += 1
            if self.eviction_log is not None:
                self.eviction_log.append((prompt_id, k))
            if not entries:
                del self._frequency[prompt_id], self._order[prompt_id]
                self._index.remove([prompt_id])
                return
