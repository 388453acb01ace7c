"""One tenant namespace's vector index: exact inner product when small, HNSW when large.

faiss's HNSW cannot remove vectors, so evictions there become tombstones: a bitmap over HNSW positions that an
IDSelector consults at search time (evicted nodes still route the graph walk, they are just never returned), and
the graph is rebuilt from the live vectors once tombstones pass a fraction of it.
"""

from __future__ import annotations

from enum import Enum

import faiss
import numpy as np

__all__ = ["IndexKind", "NamespaceIndex"]


class IndexKind(str, Enum):
    FLAT = "flat"  # IndexFlatIP under IndexIDMap2: exact, removes in place
    HNSW = "hnsw"  # IndexHNSWFlat (inner product): approximate, tombstones + rebuild


class NamespaceIndex:
    """Live vectors of one namespace, keyed by entry id, searchable for the top-1 inner product.

    Holds its own copy of each live vector (in admission order) so that it can rebuild or switch kind, and so
    that the cache can write snapshots without asking faiss to reconstruct.
    """

    def __init__(self, dim: int, *, hnsw_min_entries: int, hnsw_exit_entries: int, hnsw_m: int,
                 hnsw_ef_search: int, hnsw_ef_construction: int, tombstone_rebuild_fraction: float):
        if not 0 <= hnsw_exit_entries <= hnsw_min_entries:
            raise ValueError(f"hnsw_exit_entries={hnsw_exit_entries} must lie in [0, hnsw_min_entries="
                             f"{hnsw_min_entries}]")
        if not 0.0 < tombstone_rebuild_fraction <= 1.0:
            raise ValueError(f"tombstone_rebuild_fraction must be in (0, 1], got {tombstone_rebuild_fraction}")
        self.dim = dim
        self._hnsw_min_entries = hnsw_min_entries
        self._hnsw_exit_entries = hnsw_exit_entries
        self._hnsw_m = hnsw_m
        self._hnsw_ef_search = hnsw_ef_search
        self._hnsw_ef_construction = hnsw_ef_construction
        self._rebuild_fraction = tombstone_rebuild_fraction
        self._vectors: dict[int, np.ndarray] = {}  # live id -> (dim,) float32, in admission order
        self.hnsw_builds = 0  # how often an HNSW graph was built (switches and tombstone rebuilds)
        self._build(IndexKind.FLAT)

    # ----------------------------------------------------------------------------------------------- reading
    def __len__(self) -> int:
        return len(self._vectors)

    def __contains__(self, entry_id: int) -> bool:
        return entry_id in self._vectors

    @property
    def kind(self) -> IndexKind:
        return self._kind

    @property
    def tombstones(self) -> int:
        return self._tombstones

    def vector(self, entry_id: int) -> np.ndarray:
        return self._vectors[entry_id]

    def search(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-1 per query row: (scores (n,) float32, entry ids (n,) int64, -1 where the index is empty)."""
        n = queries.shape[0]
        if not self._vectors:
            return np.full(n, -np.inf, dtype=np.float32), np.full(n, -1, dtype=np.int64)
        if self._kind is IndexKind.FLAT:
            scores, ids = self._index.search(queries, 1)
            return scores[:, 0], ids[:, 0]
        scores, positions = self._index.search(queries, 1, params=self._search_params)
        positions = positions[:, 0]
        ids = np.where(positions >= 0, self._position_ids[np.maximum(positions, 0)], -1)
        return scores[:, 0], ids

    # ----------------------------------------------------------------------------------------------- writing
    def add(self, entry_ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add (n,) int64 ids with (n, dim) C-contiguous float32 vectors; ids must be new."""
        for entry_id, vector in zip(entry_ids.tolist(), vectors):
            if entry_id in self._vectors:
                raise ValueError(f"entry id {entry_id} is already in the index")
            self._vectors[entry_id] = vector.copy()
        if self._kind is IndexKind.FLAT and len(self._vectors) >= self._hnsw_min_entries:
            self._build(IndexKind.HNSW)  # includes the new vectors
            return
        if self._kind is IndexKind.FLAT:
            self._index.add_with_ids(vectors, entry_ids)
        else:
            self._hnsw_append(entry_ids, vectors)

    def remove(self, entry_ids: list[int]) -> None:
        for entry_id in entry_ids:
            del self._vectors[entry_id]  # KeyError for an unknown id: a bug in the caller
        if self._kind is IndexKind.FLAT:
            self._index.remove_ids(np.asarray(entry_ids, dtype=np.int64))
            return
        for entry_id in entry_ids:
            position = self._position_of.pop(entry_id)
            self._live_bits[position >> 3] &= np.uint8(~(1 << (position & 7)) & 0xFF)
        self._tombstones += len(entry_ids)
        if len(self._vectors) < self._hnsw_exit_entries:
            self._build(IndexKind.FLAT)
        elif self._tombstones > self._rebuild_fraction * self._index.ntotal:
            self._build(IndexKind.HNSW)

    # ------------------------------------------------------------------------------------------------ builds
    def _build(self, kind: IndexKind) -> None:
        """Replace the faiss index by a fresh one of `kind` holding exactly the live vectors."""
        ids = np.fromiter(self._vectors.keys(), dtype=np.int64, count=len(self._vectors))
        vectors = (np.stack(list(self._vectors.values())) if self._vectors
                   else np.empty((0, self.dim), dtype=np.float32))
        self._kind = kind
        self._tombstones = 0
        if kind is IndexKind.FLAT:
            self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
            self._index.add_with_ids(vectors, ids)
            self._position_ids = self._live_bits = self._selector = self._search_params = None
            self._position_of = {}
            return
        index = faiss.IndexHNSWFlat(self.dim, self._hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self._hnsw_ef_construction
        self._index = index
        self._position_ids = np.empty(0, dtype=np.int64)
        self._position_of = {}
        self._live_bits = np.empty(0, dtype=np.uint8)
        self.hnsw_builds += 1
        self._hnsw_append(ids, vectors)

    def _hnsw_append(self, entry_ids: np.ndarray, vectors: np.ndarray) -> None:
        start = self._index.ntotal
        self._index.add(vectors)
        end = self._index.ntotal
        if end > self._position_ids.size:  # grow geometrically; the selector points into the bitmap's memory
            capacity = max(1024, 2 * end)
            position_ids = np.full(capacity, -1, dtype=np.int64)
            position_ids[:start] = self._position_ids[:start]
            live_bits = np.zeros((capacity + 7) // 8, dtype=np.uint8)
            live_bits[:self._live_bits.size] = self._live_bits
            self._position_ids, self._live_bits = position_ids, live_bits
            self._selector = faiss.IDSelectorBitmap(self._live_bits.size, faiss.swig_ptr(self._live_bits))
            params = faiss.SearchParametersHNSW()
            params.sel = self._selector
            params.efSearch = self._hnsw_ef_search
            self._search_params = params
        positions = np.arange(start, end)
        self._position_ids[start:end] = entry_ids
        self._position_of.update(zip(entry_ids.tolist(), positions.tolist()))
        np.bitwise_or.at(self._live_bits, positions >> 3, (1 << (positions & 7)).astype(np.uint8))
