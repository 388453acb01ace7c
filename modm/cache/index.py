"""One tenant namespace's vector index: exact inner product when small, HNSW when large.

Evictions become tombstones in both: a bitmap over index positions that an IDSelector consults at search time
(faiss's HNSW cannot remove vectors; evicted nodes still route the graph walk, they are just never returned; faiss's
flat remove_ids would shift every later row, O(n) per FIFO eviction), and the index is rebuilt from the live vectors
once tombstones pass a fraction of it: a copy for the exact table, a new graph for HNSW.

Building an HNSW graph takes seconds to minutes (100k x 768 floats: tens of seconds), so a NamespaceIndex can
defer those builds to its owner: `capture_hnsw_build()` under the owner's lock, `HnswBuild.run()` outside it
(faiss releases the GIL) while the current index keeps serving, then `install()` under the lock again, which
replays the admissions and evictions that happened meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import faiss
import numpy as np

__all__ = ["FlatTable", "HnswBuild", "HnswGraph", "HnswParams", "IndexKind", "MaskedIndex", "NamespaceIndex"]

HNSW_BUILD_CHUNK = 4096  # vectors added per faiss call during a build; a stop request is honoured between chunks


class IndexKind(str, Enum):
    FLAT = "flat"  # IndexFlatIP over positions: exact, tombstones + cheap rebuild
    HNSW = "hnsw"  # IndexHNSWFlat (inner product): approximate, tombstones + rebuild


@dataclass(frozen=True)
class HnswParams:
    m: int
    ef_search: int
    ef_construction: int


class MaskedIndex:
    """A faiss index over positions 0..n-1, with a position -> entry id table and a bitmap of live positions that
    the search-time IDSelector reads (updated in place, so removing is O(1))."""

    def __init__(self, index, search_params: Callable[[], "faiss.SearchParameters"]):
        self._index = index
        self._new_search_params = search_params
        self._position_ids = np.empty(0, dtype=np.int64)
        self._live_bits = np.empty(0, dtype=np.uint8)
        self._position_of: dict[int, int] = {}
        self.tombstones = 0

    @property
    def ntotal(self) -> int:
        return self._index.ntotal

    def append(self, entry_ids: np.ndarray, vectors: np.ndarray) -> None:
        start = self._index.ntotal
        self._index.add(vectors)
        end = self._index.ntotal
        if end > self._position_ids.size:  # grow geometrically; the selector points into the bitmap's memory
            capacity = max(1024, 2 * end)
            position_ids = np.full(capacity, -1, dtype=np.int64)
            position_ids[:start] = self._position_ids[:start]
            live_bits = np.zeros((capacity + 7) // 8, dtype=np.uint8)
            live_bits[: self._live_bits.size] = self._live_bits
            self._position_ids, self._live_bits = position_ids, live_bits
            self._selector = faiss.IDSelectorBitmap(self._live_bits.size, faiss.swig_ptr(self._live_bits))
            self._search_params = self._new_search_params()
            self._search_params.sel = self._selector
        positions = np.arange(start, end)
        self._position_ids[start:end] = entry_ids
        self._position_of.update(zip(entry_ids.tolist(), positions.tolist()))
        np.bitwise_or.at(self._live_bits, positions >> 3, (1 << (positions & 7)).astype(np.uint8))

    def remove(self, entry_ids: list[int]) -> None:
        for entry_id in entry_ids:
            position = self._position_of.pop(entry_id)
            self._live_bits[position >> 3] &= np.uint8(~(1 << (position & 7)) & 0xFF)
        self.tombstones += len(entry_ids)

    def search(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, positions = self._index.search(queries, 1, params=self._search_params)
        positions = positions[:, 0]
        ids = np.where(positions >= 0, self._position_ids[np.maximum(positions, 0)], -1)
        return scores[:, 0], ids


class HnswGraph(MaskedIndex):
    """IndexHNSWFlat (inner product) over positions; evicted nodes still route the graph walk, they are just never
    returned."""

    def __init__(self, dim: int, params: HnswParams):
        index = faiss.IndexHNSWFlat(dim, params.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction

        def search_params() -> faiss.SearchParametersHNSW:
            out = faiss.SearchParametersHNSW()
            out.efSearch = params.ef_search
            return out

        super().__init__(index, search_params)


class FlatTable(MaskedIndex):
    """Exact inner-product search (IndexFlatIP) over positions. Removing only clears a bit (faiss's own
    remove_ids shifts every later row: O(n) per eviction); the owner rebuilds the table from its live vectors
    once tombstones pass a fraction of it, so FIFO eviction costs O(1) amortised."""

    def __init__(self, dim: int):
        super().__init__(faiss.IndexFlatIP(dim), faiss.SearchParameters)


@dataclass
class HnswBuild:
    """The live vectors of a namespace at one moment, to be turned into an HnswGraph without holding a lock.

    `vectors` are references to the index's own arrays, which are never modified after admission.
    """

    dim: int
    params: HnswParams
    ids: list[int]
    vectors: list[np.ndarray]

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> HnswGraph | None:
        """Build the graph; None if `should_stop()` turned true between chunks."""
        graph = HnswGraph(self.dim, self.params)
        for start in range(0, len(self.ids), HNSW_BUILD_CHUNK):
            if should_stop():
                return None
            chunk = slice(start, start + HNSW_BUILD_CHUNK)
            graph.append(np.asarray(self.ids[chunk], dtype=np.int64), np.stack(self.vectors[chunk]))
        return graph


class NamespaceIndex:
    """Live vectors of one namespace, keyed by entry id, searchable for the top-1 inner product.

    Holds its own reference to each live vector (in admission order) so that it can rebuild or switch kind, and
    so that the cache can write snapshots without asking faiss to reconstruct. Exact search is used below
    `hnsw_min_entries` and HNSW from there on, until the namespace shrinks below `hnsw_exit_entries`. With
    `defer_hnsw_builds`, HNSW graphs are built only through capture_hnsw_build/install; meanwhile the current
    index (exact, or HNSW with more tombstones) keeps answering correctly.
    """

    def __init__(
        self,
        dim: int,
        *,
        hnsw_min_entries: int,
        hnsw_exit_entries: int,
        hnsw_m: int,
        hnsw_ef_search: int,
        hnsw_ef_construction: int,
        tombstone_rebuild_fraction: float,
        defer_hnsw_builds: bool = False,
    ):
        if not 0 <= hnsw_exit_entries <= hnsw_min_entries:
            raise ValueError(
                f"hnsw_exit_entries={hnsw_exit_entries} must lie in [0, hnsw_min_entries={hnsw_min_entries}]"
            )
        if not 0.0 < tombstone_rebuild_fraction <= 1.0:
            raise ValueError(f"tombstone_rebuild_fraction must be in (0, 1], got {tombstone_rebuild_fraction}")
        self.dim = dim
        self._hnsw_min_entries = hnsw_min_entries
        self._hnsw_exit_entries = hnsw_exit_entries
        self._params = HnswParams(m=hnsw_m, ef_search=hnsw_ef_search, ef_construction=hnsw_ef_construction)
        self._rebuild_fraction = tombstone_rebuild_fraction
        self._defer = defer_hnsw_builds
        self._vectors: dict[int, np.ndarray] = {}  # live id -> (dim,) float32, in admission order
        self._graph: HnswGraph | None = None  # the HNSW index, when kind is HNSW
        self._flat: FlatTable | None = FlatTable(dim)  # the exact index, when kind is FLAT
        self.hnsw_builds = 0  # graphs installed (switches and tombstone rebuilds)

    # ----------------------------------------------------------------------------------------------- reading
    def __len__(self) -> int:
        return len(self._vectors)

    def __contains__(self, entry_id: int) -> bool:
        return entry_id in self._vectors

    @property
    def kind(self) -> IndexKind:
        return IndexKind.FLAT if self._graph is None else IndexKind.HNSW

    @property
    def tombstones(self) -> int:
        return 0 if self._graph is None else self._graph.tombstones

    @property
    def hnsw_build_due(self) -> bool:
        """A switch to HNSW, or a rebuild of a graph with too many tombstones, is due."""
        if self._graph is None:
            return len(self._vectors) >= self._hnsw_min_entries
        return self._graph.tombstones > self._rebuild_fraction * self._graph.ntotal

    def vector(self, entry_id: int) -> np.ndarray:
        return self._vectors[entry_id]

    def search(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-1 per query row: (scores (n,) float32, entry ids (n,) int64, -1 where the index is empty)."""
        n = queries.shape[0]
        if not self._vectors:
            return np.full(n, -np.inf, dtype=np.float32), np.full(n, -1, dtype=np.int64)
        if self._graph is not None:
            return self._graph.search(queries)
        return self._flat.search(queries)

    # ----------------------------------------------------------------------------------------------- writing
    def add(self, entry_ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add (n,) int64 ids with (n, dim) C-contiguous float32 vectors; ids must be new."""
        for entry_id, vector in zip(entry_ids.tolist(), vectors):
            if entry_id in self._vectors:
                raise ValueError(f"entry id {entry_id} is already in the index")
            self._vectors[entry_id] = vector.copy()
        if self._graph is not None:
            self._graph.append(entry_ids, vectors)
        elif not (self.hnsw_build_due and not self._defer):  # about to be rebuilt with these vectors anyway
            self._flat.append(entry_ids, vectors)
        self._build_if_due()

    def remove(self, entry_ids: list[int]) -> None:
        for entry_id in entry_ids:
            del self._vectors[entry_id]  # KeyError for an unknown id: a bug in the caller
        if self._graph is None:
            self._flat.remove(entry_ids)
            if self._flat.tombstones > self._rebuild_fraction * self._flat.ntotal:
                self._switch_to_flat()  # a copy of the live vectors, amortised over the evictions since the last
        elif len(self._vectors) < self._hnsw_exit_entries:
            self._switch_to_flat()  # cheap: a copy of the live vectors
        else:
            self._graph.remove(entry_ids)
            self._build_if_due()

    # ------------------------------------------------------------------------------------------------ builds
    def capture_hnsw_build(self) -> HnswBuild:
        return HnswBuild(
            dim=self.dim, params=self._params, ids=list(self._vectors), vectors=list(self._vectors.values())
        )

    def install(self, build: HnswBuild, graph: HnswGraph) -> bool:
        """Swap in `graph` (built from `build`), replaying admissions and evictions since the capture.

        False (and nothing changes) if the namespace has meanwhile shrunk below the HNSW exit size.
        """
        if len(self._vectors) < self._hnsw_exit_entries:
            return False
        captured = set(build.ids)
        added = [entry_id for entry_id in self._vectors if entry_id not in captured]
        removed = [entry_id for entry_id in build.ids if entry_id not in self._vectors]
        if added:
            graph.append(np.asarray(added, dtype=np.int64), np.stack([self._vectors[i] for i in added]))
        if removed:
            graph.remove(removed)
        self._graph, self._flat = graph, None
        self.hnsw_builds += 1
        return True

    def _build_if_due(self) -> None:
        if self._defer or not self.hnsw_build_due:
            return
        build = self.capture_hnsw_build()
        self.install(build, build.run())

    def _switch_to_flat(self) -> None:
        self._graph = None
        self._flat = FlatTable(self.dim)
        if self._vectors:
            self._flat.append(
                np.fromiter(self._vectors, dtype=np.int64, count=len(self._vectors)),
                np.stack(list(self._vectors.values())),
            )
