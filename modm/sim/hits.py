"""Hit models: what retrieval decides for each request at its arrival, and what completions add to the cache.

- `ParametricHits`: no embeddings; each request hits with probability `hit_rate` and draws k from `k_mix`.
  Decisions are drawn up front from a seeded generator, so they do not depend on the cache (or the schedule).
- `FifoImageCache`: MoDM's cache of final images, in memory: a ring buffer of the admitted requests' embeddings
  (FIFO eviction is an overwrite), top-1 by inner product with faiss's exact kernel (`faiss.knn`, the metric of
  the live cache's FLAT index), the score mapped to k by the live `KTable`, admission by the live `should_admit`.
- `NirvanaLatentCache` (modm/sim/nirvana.py): NIRVANA's latent cache with LCBFU eviction.

All three implement `HitModel`. Request i's embedding is row i of the workload's embedding matrix (L2-normalised;
the query and the key of a text->text cache are the same prompt embedding).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import faiss
import numpy as np

from modm.cache import should_admit
from modm.config.schema import Admission
from modm.policy import KTable, RetrievalDecision

__all__ = ["FifoImageCache", "HitModel", "NoCache", "ParametricHits", "check_embeddings"]


class HitModel(Protocol):
    def decide(self, request: int) -> RetrievalDecision:
        """Retrieval for request `request` at its arrival."""

    def complete(self, request: int, decision: RetrievalDecision, *, from_large_model: bool) -> None:
        """Request `request` finished; its output may enter the cache."""

    def prefill(self, keys: np.ndarray) -> None:
        """Fill the cache before time 0 with large-model outputs whose keys are the rows of `keys` (MoDM warms
        its cache with 10k SD3.5-Large images; NIRVANA's pre-cache holds those prompts' latents)."""


def check_embeddings(embeddings: np.ndarray, n_requests: int) -> np.ndarray:
    """(n_requests, dim) C-contiguous float32 with unit rows, or a ValueError saying what is wrong."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != n_requests:
        raise ValueError(f"embeddings must have shape ({n_requests}, dim), one row per request; got {embeddings.shape}")
    norms = np.linalg.norm(embeddings, axis=1)
    if embeddings.size and not np.allclose(norms, 1.0, atol=1e-3):
        bad = int(np.argmax(np.abs(norms - 1.0)))
        raise ValueError(f"embeddings must be L2-normalised; row {bad} has norm {norms[bad]:.4f}")
    return embeddings


class ParametricHits:
    """Independent hits at `hit_rate`, k drawn from `k_mix` (weights, normalised here)."""

    def __init__(
        self, n_requests: int, hit_rate: float, k_mix: Mapping[int, float], total_steps: int, rng: np.random.Generator
    ):
        if not 0.0 <= hit_rate <= 1.0:
            raise ValueError(f"hit_rate must be in [0, 1], got {hit_rate}")
        ks = np.array(sorted(k_mix), dtype=np.int64)
        weights = np.array([k_mix[k] for k in ks], dtype=np.float64)
        if hit_rate > 0 and (ks.size == 0 or np.any(weights < 0) or weights.sum() <= 0):
            raise ValueError(f"k_mix needs non-negative weights with a positive sum, got {dict(k_mix)}")
        if np.any((ks <= 0) | (ks >= total_steps)):
            raise ValueError(f"every k in k_mix must be in (0, {total_steps}), got {ks.tolist()}")
        self.total_steps = total_steps
        self._hits = rng.random(n_requests) < hit_rate
        self._ks = rng.choice(ks, size=n_requests, p=weights / weights.sum()) if ks.size else np.zeros(n_requests)

    def decide(self, request: int) -> RetrievalDecision:
        if not self._hits[request]:
            return RetrievalDecision.miss()
        k = int(self._ks[request])
        return RetrievalDecision(hit=True, k=k, strength=1.0 - k / self.total_steps, score=None)

    def complete(self, request: int, decision: RetrievalDecision, *, from_large_model: bool) -> None:
        return None  # nothing is cached

    def prefill(self, keys: np.ndarray) -> None:
        return None  # hits do not depend on what is cached


class FifoImageCache:
    """The FIFO image cache over precomputed embeddings (one namespace), `capacity` entries at most."""

    def __init__(self, embeddings: np.ndarray, capacity: int, k_table: KTable, admission: Admission):
        if capacity <= 0:
            raise ValueError(f"cache capacity must be positive, got {capacity}")
        self._embeddings = embeddings
        self._keys = np.zeros((capacity, embeddings.shape[1]), dtype=np.float32)  # ring buffer of cached keys
        self._entry_request = np.full(capacity, -1, dtype=np.int64)  # which request produced each slot
        self._next_slot = 0
        self._size = 0
        self.k_table = k_table
        self.admission = Admission(admission)
        self.admitted = 0
        self.evicted = 0

    def __len__(self) -> int:
        return self._size

    @property
    def capacity(self) -> int:
        return self._keys.shape[0]

    def cached_requests(self) -> list[int]:
        """Requests whose outputs are cached, oldest first."""
        if self._size < self.capacity:
            return self._entry_request[: self._size].tolist()
        return np.roll(self._entry_request, -self._next_slot).tolist()

    def top1(self, request: int) -> tuple[float | None, int | None]:
        """(score, request whose cached output matched) for the request's embedding; (None, None) when empty."""
        if self._size == 0:
            return None, None
        scores, slots = faiss.knn(
            self._embeddings[request : request + 1], self._keys[: self._size], 1, faiss.METRIC_INNER_PRODUCT
        )
        return float(scores[0, 0]), int(self._entry_request[slots[0, 0]])

    def decide(self, request: int) -> RetrievalDecision:
        score, _ = self.top1(request)
        return self.k_table.decide(score)

    def complete(self, request: int, decision: RetrievalDecision, *, from_large_model: bool) -> None:
        if should_admit(self.admission, from_large_model=from_large_model, refined=decision.hit):
            self._insert(self._embeddings[request], request)

    def prefill(self, keys: np.ndarray) -> None:
        for key in check_embeddings(keys, keys.shape[0]):
            self._insert(key, -1)  # -1: produced before the run, by no request of the workload

    def _insert(self, key: np.ndarray, request: int) -> None:
        slot = self._next_slot
        if self._size == self.capacity:
            self.evicted += 1  # the oldest entry sits in the slot about to be overwritten
        else:
            self._size += 1
        self._keys[slot] = key
        self._entry_request[slot] = request
        self._next_slot = (slot + 1) % self.capacity
        self.admitted += 1


class NoCache:
    """Vanilla: no retrieval, every request is a miss."""

    def decide(self, request: int) -> RetrievalDecision:
        return RetrievalDecision.miss()

    def complete(self, request: int, decision: RetrievalDecision, *, from_large_model: bool) -> None:
        return None

    def prefill(self, keys: np.ndarray) -> None:
        return None
