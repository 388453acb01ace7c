"""One tenant namespace's vector index: exact inner product when small, IVF (or HNSW) when large.

The large-namespace kind was chosen by measurement (benchmarks/index_choice.py, table in
benchmarks/results/index_choice.json): IVF whose lists hold 4-bit product-quantised codes scanned with SIMD lookup
tables (faiss's fast-scan), with an exact re-rank of the best candidates (faiss IndexRefine), reached recall@1 >=
0.99 on the random 768-d near-duplicates at 0.16 ms (100k entries, nprobe 48 of 1,024 lists) and 0.67 ms (1M,
nprobe 96 of 4,096): a quarter to a half of 8-bit scalar-quantised lists' time (0.48 ms and 2.8 ms at the same
recall), since a probed vector is 96 bytes instead of 768. HNSW (M 32) found only 0.74-0.98 of the random 768-d
near-duplicates' top-1 (efSearch 32-128, 1-3 ms), less than IVF on the 64-d text->image set, and takes minutes to
build where IVF takes seconds.

Evictions become tombstones in every kind: a bitmap over index positions that an IDSelector consults at search time
(faiss's HNSW cannot remove vectors; evicted nodes still route the graph walk, they are just never returned; faiss's
flat and IVF remove_ids cost O(n) or O(list) per FIFO eviction), and the index is rebuilt from the live vectors once
tombstones pass a fraction of it: a copy for the exact table, retrained lists for IVF, a new graph for HNSW.

Building an approximate index takes seconds to minutes (100k x 768 floats: k-means and assignment for IVF, tens of
seconds for an HNSW graph), so a NamespaceIndex can defer those builds to its owner: `capture_build()` under the
owner's lock, `IndexBuild.run()` outside it (faiss releases the GIL) while the current index keeps serving, then
`install()` under the lock again, which replays the admissions and evictions that happened meanwhile.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import faiss
import numpy as np

from modm.cache.gpu_index import GpuPlacement, filtered_top1, gpu_placement
from modm.config import CacheConfig
from modm.constants import DEFAULT_IVF_NPROBE, DEFAULT_IVF_REFINE_K_FACTOR, DEFAULT_LARGE_INDEX

__all__ = [
    "FlatTable",
    "HnswGraph",
    "HnswParams",
    "IndexBuild",
    "IndexKind",
    "IvfParams",
    "IvfTable",
    "LargeIndexSpec",
    "MaskedIndex",
    "NamespaceIndex",
    "namespace_index_options",
]

INDEX_BUILD_CHUNK = 4096  # vectors added per faiss call during a build; a stop request is honoured between chunks
IVF_MIN_TRAIN_PER_LIST = 39  # faiss's k-means warns below 39 training points per centroid
# An IVF index is retrained once its namespace wants this many times its lists (nlist ~ sqrt(n): 4x the entries),
# so a namespace that grows keeps short lists; each retrain costs O(n) and n has quadrupled since: O(1) amortised.
IVF_GROWTH = 2
# The lists' codes: one 4-bit product-quantiser code per this many dimensions (768-d: 192 codes, 96 bytes a vector),
# from PQ_MIN_DIM dimensions on. Below it (or where PQ_DIMS_PER_CODE does not divide the dimension), 8-bit scalar
# codes: few bytes already (64-d: 64), and 4-bit codes of a low-dimensional space are too coarse to keep the exact
# top-1 among the re-ranked candidates where neighbours crowd (measured on 16-d clusters: recall@1 0.2).
PQ_DIMS_PER_CODE = 4
PQ_MIN_DIM = 256
# nprobe = this * sqrt(nlist), at least IVF_MIN_PROBES, unless set: the fewest probes with recall@1 >= 0.99 on
# random 768-d near-duplicates at both measured sizes (48 of 1,024 lists at 100k: 0.995; 96 of 4,096 at 1M: 0.996;
# 80: 0.993; 64: 0.986). A small namespace's few lists are all probed (cheap, and exact but for quantisation).
IVF_PROBES_PER_SQRT_LIST = 1.5
IVF_MIN_PROBES = 48


class IndexKind(str, Enum):
    FLAT = "flat"  # IndexFlatIP over positions: exact, tombstones + cheap rebuild
    IVF = "ivf"  # IVF-PQ fast-scan + exact re-rank (inner product): probes nprobe of nlist lists; tombstones + rebuild
    HNSW = "hnsw"  # IndexHNSWFlat (inner product): approximate, tombstones + rebuild


@dataclass(frozen=True)
class HnswParams:
    m: int
    ef_search: int
    ef_construction: int


@dataclass(frozen=True)
class IvfParams:
    nprobe: int = 0  # 0: chosen from the lists' count (`probes_for`)
    nlist: int = 0  # 0: chosen from the namespace's size at each build (`lists_for`)
    refine_k_factor: float = DEFAULT_IVF_REFINE_K_FACTOR  # candidates re-ranked exactly, per result
    kmeans_iters: int = 10
    train_per_list: int = 32  # k-means training vectors per list (a sample of the live vectors)

    def lists_for(self, n: int) -> int:
        """nlist for n vectors: a power of two near 4 sqrt(n) (1,024 at 100k, 4,096 at 1M) unless set, and never
        more than n / IVF_MIN_TRAIN_PER_LIST, so that each k-means centroid has points to learn from."""
        wanted = self.nlist or 1 << max(0, round(math.log2(4 * math.sqrt(max(n, 1)))))
        return max(1, min(wanted, n // IVF_MIN_TRAIN_PER_LIST))

    def probes_for(self, nlist: int) -> int:
        """nprobe for nlist lists unless set: 1.5 sqrt(nlist), at least 48 (48 of 1,024, 96 of 4,096)."""
        wanted = self.nprobe or max(IVF_MIN_PROBES, round(IVF_PROBES_PER_SQRT_LIST * math.sqrt(nlist)))
        return max(1, min(nlist, wanted))


class MaskedIndex:
    """A faiss index over positions 0..n-1, with a position -> entry id table and a bitmap of live positions that
    the search-time IDSelector reads (updated in place, so removing is O(1)). On a GPU, whose indexes take no
    selector, the search asks for a few candidates and filters them with the same bitmap (gpu_index)."""

    def __init__(
        self,
        index,
        search_params: Callable[[faiss.IDSelector], faiss.SearchParameters],
        gpu: GpuPlacement | None = None,
    ):
        self._index = index if gpu is None else gpu.to_gpu(index)
        self._on_gpu = gpu is not None
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
            self._search_params = self._new_search_params(self._selector)
        positions = np.arange(start, end)
        self._position_ids[start:end] = entry_ids
        self._position_of.update(zip(entry_ids.tolist(), positions.tolist()))
        np.bitwise_or.at(self._live_bits, positions >> 3, (1 << (positions & 7)).astype(np.uint8))

    def remove(self, entry_ids: list[int]) -> None:
        for entry_id in entry_ids:
            position = self._position_of.pop(entry_id)
            self._live_bits[position >> 3] &= np.uint8(~(1 << (position & 7)) & 0xFF)
        self.tombstones += len(entry_ids)

    def _is_live(self, positions: np.ndarray) -> np.ndarray:
        return (self._live_bits[positions >> 3] >> (positions & 7).astype(np.uint8)) & 1 == 1

    def search(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._on_gpu:
            scores, positions = filtered_top1(self._index.search, queries, self._is_live, self._index.ntotal)
        else:
            scores, positions = self._index.search(queries, 1, params=self._search_params)
            scores, positions = scores[:, 0], positions[:, 0]
        ids = np.where(positions >= 0, self._position_ids[np.maximum(positions, 0)], -1)
        return scores, ids


def _with_selector(params: faiss.SearchParameters, selector: faiss.IDSelector) -> faiss.SearchParameters:
    params.sel = selector
    return params


class HnswGraph(MaskedIndex):
    """IndexHNSWFlat (inner product) over positions; evicted nodes still route the graph walk, they are just never
    returned. Always on the CPU (faiss has no GPU HNSW)."""

    def __init__(self, dim: int, params: HnswParams):
        index = faiss.IndexHNSWFlat(dim, params.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction

        def search_params(selector: faiss.IDSelector) -> faiss.SearchParametersHNSW:
            out = faiss.SearchParametersHNSW()
            out.efSearch = params.ef_search
            return _with_selector(out, selector)

        super().__init__(index, search_params)


class IvfTable(MaskedIndex):
    """IVF over positions, its coarse quantizer trained by k-means on `train` (a sample of the vectors it will
    hold); later admissions go to their nearest list. Evicted vectors stay in their lists until the owner rebuilds
    (and retrains, following the drift of what is cached).

    On the CPU the lists hold 4-bit product-quantised codes, one per PQ_DIMS_PER_CODE dimensions, scanned in SIMD
    registers (IndexIVFPQFastScan: a thirty-second of the float bytes per probed vector; 8-bit scalar codes below
    PQ_MIN_DIM dimensions), and faiss's IndexRefine re-ranks the best `refine_k_factor` candidates by exact inner
    product, so the top-1 and its score are exact whenever it is among them. On a GPU, IndexIVFFlat
    (GpuIndexIVFFlat): exact scores in the probed lists, no re-rank needed at GPU memory bandwidth.
    """

    def __init__(self, train: np.ndarray, nlist: int, params: IvfParams, gpu: GpuPlacement | None = None):
        dim = train.shape[1]
        self.nlist = nlist
        self.nprobe = params.probes_for(nlist)
        self._quantizer = faiss.IndexFlatIP(dim)  # referenced here: the IVF index does not own it
        ip = faiss.METRIC_INNER_PRODUCT
        if gpu is not None:
            self._lists = faiss.IndexIVFFlat(self._quantizer, dim, nlist, ip)
        elif dim >= PQ_MIN_DIM and dim % PQ_DIMS_PER_CODE == 0:
            self._lists = faiss.IndexIVFPQFastScan(self._quantizer, dim, nlist, dim // PQ_DIMS_PER_CODE, 4, ip)
        else:
            self._lists = faiss.IndexIVFScalarQuantizer(self._quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, ip)
        self._lists.cp.niter = params.kmeans_iters
        self._lists.train(np.ascontiguousarray(train))
        self._lists.nprobe = self.nprobe  # what a GPU copy probes (it takes no search parameters)
        if gpu is not None:
            super().__init__(self._lists, lambda selector: None, gpu)
            return
        self._exact = faiss.IndexFlatIP(dim)
        index = faiss.IndexRefine(self._lists, self._exact)  # adds go to both; neither is owned

        def search_params(selector: faiss.IDSelector) -> faiss.IndexRefineSearchParameters:
            lists = faiss.SearchParametersIVF()
            lists.nprobe = self.nprobe
            out = faiss.IndexRefineSearchParameters()
            out.k_factor = params.refine_k_factor
            out.base_index_params = _with_selector(lists, selector)  # IndexRefine passes only these to the lists
            return out

        super().__init__(index, search_params)


class FlatTable(MaskedIndex):
    """Exact inner-product search (IndexFlatIP) over positions. Removing only clears a bit (faiss's own
    remove_ids shifts every later row: O(n) per eviction); the owner rebuilds the table from its live vectors
    once tombstones pass a fraction of it, so FIFO eviction costs O(1) amortised."""

    def __init__(self, dim: int, gpu: GpuPlacement | None = None):
        super().__init__(
            faiss.IndexFlatIP(dim), lambda selector: _with_selector(faiss.SearchParameters(), selector), gpu
        )


@dataclass(frozen=True)
class LargeIndexSpec:
    """What a namespace at or above the approximate-search threshold is indexed with."""

    kind: IndexKind  # IVF or HNSW
    hnsw: HnswParams
    ivf: IvfParams
    gpu: GpuPlacement | None = None  # IVF only: HNSW stays on the CPU

    def __post_init__(self):
        if self.kind is IndexKind.FLAT:
            raise ValueError("the large-namespace index must be approximate (ivf or hnsw), got flat")


@dataclass
class IndexBuild:
    """The live vectors of a namespace at one moment, to be indexed without holding a lock.

    `vectors` are references to the index's own arrays, which are never modified after admission.
    """

    dim: int
    spec: LargeIndexSpec
    ids: list[int]
    vectors: list[np.ndarray]

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> MaskedIndex | None:
        """Build the index (train an IVF's lists on a sample, then add in chunks); None if `should_stop()` turned
        true between chunks."""
        if self.spec.kind is IndexKind.HNSW:
            index = HnswGraph(self.dim, self.spec.hnsw)
        else:
            n, ivf = len(self.ids), self.spec.ivf
            nlist = ivf.lists_for(n)
            sample = np.random.default_rng(n).choice(n, min(n, ivf.train_per_list * nlist), replace=False)
            index = IvfTable(np.stack([self.vectors[i] for i in np.sort(sample)]), nlist, ivf, self.spec.gpu)
        for start in range(0, len(self.ids), INDEX_BUILD_CHUNK):
            if should_stop():
                return None
            chunk = slice(start, start + INDEX_BUILD_CHUNK)
            index.append(np.asarray(self.ids[chunk], dtype=np.int64), np.stack(self.vectors[chunk]))
        return index


class NamespaceIndex:
    """Live vectors of one namespace, keyed by entry id, searchable for the top-1 inner product.

    Holds its own reference to each live vector (in admission order) so that it can rebuild or switch kind, and
    so that the cache can write snapshots without asking faiss to reconstruct. Exact search is used below
    `hnsw_min_entries` and the approximate `large_kind` (IVF or HNSW) from there on, until the namespace shrinks
    below `hnsw_exit_entries`. With `defer_builds`, approximate indexes are built only through capture_build/
    install; meanwhile the current index (exact, or approximate with more tombstones) keeps answering correctly.
    Given `gpu`, the exact and IVF indexes live on that GPU (HNSW stays on the CPU).
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
        large_kind: IndexKind | str = DEFAULT_LARGE_INDEX,
        ivf_nprobe: int = DEFAULT_IVF_NPROBE,
        ivf_nlist: int = 0,
        ivf_refine_k_factor: float = DEFAULT_IVF_REFINE_K_FACTOR,
        gpu: GpuPlacement | None = None,
        defer_builds: bool = False,
    ):
        if not 0 <= hnsw_exit_entries <= hnsw_min_entries:
            raise ValueError(
                f"hnsw_exit_entries={hnsw_exit_entries} must lie in [0, hnsw_min_entries={hnsw_min_entries}]"
            )
        if not 0.0 < tombstone_rebuild_fraction <= 1.0:
            raise ValueError(f"tombstone_rebuild_fraction must be in (0, 1], got {tombstone_rebuild_fraction}")
        if ivf_nprobe < 0 or ivf_nlist < 0 or ivf_refine_k_factor < 1:
            raise ValueError(
                f"ivf_nprobe and ivf_nlist must be >= 0 (0: chosen from the size) and ivf_refine_k_factor >= 1, "
                f"got {ivf_nprobe}, {ivf_nlist} and {ivf_refine_k_factor}"
            )
        self.dim = dim
        self._hnsw_min_entries = hnsw_min_entries
        self._hnsw_exit_entries = hnsw_exit_entries
        self._spec = LargeIndexSpec(
            kind=IndexKind(large_kind),
            hnsw=HnswParams(m=hnsw_m, ef_search=hnsw_ef_search, ef_construction=hnsw_ef_construction),
            ivf=IvfParams(nprobe=ivf_nprobe, nlist=ivf_nlist, refine_k_factor=ivf_refine_k_factor),
            gpu=gpu,
        )
        self._gpu = gpu
        self._rebuild_fraction = tombstone_rebuild_fraction
        self._defer = defer_builds
        self._vectors: dict[int, np.ndarray] = {}  # live id -> (dim,) float32, in admission order
        self._large: MaskedIndex | None = None  # the approximate index, when kind is not FLAT
        self._flat: FlatTable | None = FlatTable(dim, gpu)  # the exact index, when kind is FLAT
        self.builds = 0  # approximate indexes installed (switches and tombstone rebuilds)

    # ----------------------------------------------------------------------------------------------- reading
    def __len__(self) -> int:
        return len(self._vectors)

    def __contains__(self, entry_id: int) -> bool:
        return entry_id in self._vectors

    @property
    def kind(self) -> IndexKind:
        return IndexKind.FLAT if self._large is None else self._spec.kind

    @property
    def tombstones(self) -> int:
        return 0 if self._large is None else self._large.tombstones

    @property
    def build_due(self) -> bool:
        """A switch to the approximate index, or a rebuild of one with too many tombstones (or, for IVF, too few
        lists for today's size), is due."""
        if self._large is None:
            return len(self._vectors) >= self._hnsw_min_entries
        if isinstance(self._large, IvfTable) and self._spec.ivf.lists_for(len(self)) >= IVF_GROWTH * self._large.nlist:
            return True  # lists trained for a quarter of today's size are each 4x longer than they should be
        return self._large.tombstones > self._rebuild_fraction * self._large.ntotal

    def vector(self, entry_id: int) -> np.ndarray:
        return self._vectors[entry_id]

    def search(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-1 per query row: (scores (n,) float32, entry ids (n,) int64, -1 where the index is empty)."""
        n = queries.shape[0]
        if not self._vectors:
            return np.full(n, -np.inf, dtype=np.float32), np.full(n, -1, dtype=np.int64)
        if self._large is not None:
            return self._large.search(queries)
        return self._flat.search(queries)

    # ----------------------------------------------------------------------------------------------- writing
    def add(self, entry_ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add (n,) int64 ids with (n, dim) C-contiguous float32 vectors; ids must be new."""
        for entry_id, vector in zip(entry_ids.tolist(), vectors):
            if entry_id in self._vectors:
                raise ValueError(f"entry id {entry_id} is already in the index")
            self._vectors[entry_id] = vector.copy()
        if self._large is not None:
            self._large.append(entry_ids, vectors)
        elif not (self.build_due and not self._defer):  # about to be rebuilt with these vectors anyway
            self._flat.append(entry_ids, vectors)
        self._build_if_due()

    def remove(self, entry_ids: list[int]) -> None:
        for entry_id in entry_ids:
            del self._vectors[entry_id]  # KeyError for an unknown id: a bug in the caller
        if self._large is None:
            self._flat.remove(entry_ids)
            if self._flat.tombstones > self._rebuild_fraction * self._flat.ntotal:
                self._switch_to_flat()  # a copy of the live vectors, amortised over the evictions since the last
        elif len(self._vectors) < self._hnsw_exit_entries:
            self._switch_to_flat()  # cheap: a copy of the live vectors
        else:
            self._large.remove(entry_ids)
            self._build_if_due()

    # ------------------------------------------------------------------------------------------------ builds
    def capture_build(self) -> IndexBuild:
        return IndexBuild(dim=self.dim, spec=self._spec, ids=list(self._vectors), vectors=list(self._vectors.values()))

    def install(self, build: IndexBuild, index: MaskedIndex) -> bool:
        """Swap in `index` (built from `build`), replaying admissions and evictions since the capture.

        False (and nothing changes) if the namespace has meanwhile shrunk below the exit size.
        """
        if len(self._vectors) < self._hnsw_exit_entries:
            return False
        captured = set(build.ids)
        added = [entry_id for entry_id in self._vectors if entry_id not in captured]
        removed = [entry_id for entry_id in build.ids if entry_id not in self._vectors]
        if added:
            index.append(np.asarray(added, dtype=np.int64), np.stack([self._vectors[i] for i in added]))
        if removed:
            index.remove(removed)
        self._large, self._flat = index, None
        self.builds += 1
        return True

    def _build_if_due(self) -> None:
        if self._defer or not self.build_due:
            return
        build = self.capture_build()
        self.install(build, build.run())

    def _switch_to_flat(self) -> None:
        self._large = None
        self._flat = FlatTable(self.dim, self._gpu)
        if self._vectors:
            self._flat.append(
                np.fromiter(self._vectors, dtype=np.int64, count=len(self._vectors)),
                np.stack(list(self._vectors.values())),
            )


def namespace_index_options(
    config: CacheConfig, *, tombstone_rebuild_fraction: float, hysteresis_fraction: float
) -> dict:
    """NamespaceIndex keyword arguments for a cache `config` (the writer's and its followers' alike), its device
    resolved here: 'cuda' without faiss GPU support raises at once."""
    return dict(
        hnsw_min_entries=config.hnsw_min_entries,
        hnsw_exit_entries=math.floor(config.hnsw_min_entries * (1.0 - hysteresis_fraction)),
        hnsw_m=config.hnsw_m,
        hnsw_ef_search=config.hnsw_ef_search,
        hnsw_ef_construction=config.hnsw_ef_construction,
        tombstone_rebuild_fraction=tombstone_rebuild_fraction,
        large_kind=IndexKind(config.large_index.value),
        ivf_nprobe=config.ivf_nprobe,
        ivf_nlist=config.ivf_nlist,
        ivf_refine_k_factor=config.ivf_refine_k_factor,
        gpu=gpu_placement(config.device),
    )
