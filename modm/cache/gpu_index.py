"""faiss-gpu placement of the cache's indexes, and top-1 search with tombstones where no IDSelector is honoured.

A cache resolves its `device` once, at startup (`gpu_placement`): 'cpu' keeps every index on the CPU; 'cuda' /
'cuda:N' needs a faiss built with GPU support that sees that GPU, else it is refused there and then; 'auto' uses
GPU 0 when faiss has one and the CPU otherwise. Exact and IVF indexes are moved with `faiss.index_cpu_to_gpu`
(GpuIndexFlatIP, GpuIndexIVFFlat); HNSW has no GPU version and stays on the CPU.

GPU indexes do not take search-time IDSelectors, so evicted positions are filtered after the search: ask for a few
candidates, keep the best live one, and ask again for more for the rows whose candidates were all evicted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np

__all__ = ["GpuPlacement", "filtered_top1", "gpu_placement"]

FILTER_FIRST_K = 8  # candidates asked for first; tombstones stay below the rebuild fraction, so one live is near
FILTER_GROWTH = 8  # factor by which the candidates grow for rows whose candidates were all evicted
GPU_MAX_K = 2048  # the largest k faiss's GPU indexes answer


@dataclass(frozen=True)
class GpuPlacement:
    """One GPU of faiss, with the resources (temporary memory, streams) its indexes share."""

    gpu_id: int
    resources: object  # faiss.StandardGpuResources

    def to_gpu(self, index: faiss.Index) -> faiss.Index:
        return faiss.index_cpu_to_gpu(self.resources, self.gpu_id, index)


def _faiss_gpus() -> int:
    if not hasattr(faiss, "StandardGpuResources") or not hasattr(faiss, "index_cpu_to_gpu"):
        return 0  # faiss-cpu
    return int(faiss.get_num_gpus())


def gpu_placement(device: str) -> GpuPlacement | None:
    """The GPU the cache's indexes go to for `device` ('cpu', 'auto', 'cuda', 'cuda:N'), or None for the CPU."""
    if device == "cpu":
        return None
    gpus = _faiss_gpus()
    if device == "auto":
        return GpuPlacement(0, faiss.StandardGpuResources()) if gpus else None
    gpu_id = int(device.partition(":")[2] or 0) if device.startswith("cuda") else -1
    if gpu_id < 0:
        raise ValueError(f"cache device must be 'cpu', 'auto', 'cuda' or 'cuda:N', got {device!r}")
    if not gpus:
        raise RuntimeError(
            f"cache device {device!r}: this faiss ({faiss.__version__}) has no GPU support or sees no GPU; "
            "install faiss-gpu on a machine with a GPU, or set the cache device to 'cpu' or 'auto'"
        )
    if gpu_id >= gpus:
        raise RuntimeError(f"cache device {device!r}: faiss sees {gpus} GPU(s)")
    return GpuPlacement(gpu_id, faiss.StandardGpuResources())


def filtered_top1(
    search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
    queries: np.ndarray,
    is_live: Callable[[np.ndarray], np.ndarray],
    ntotal: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Best live position per query row: (scores (n,), positions (n,), -1 where none was found).

    `search(queries, k)` returns faiss's (scores, positions) of shape (n, k), best first, -1 padded;
    `is_live(positions)` says which positions are not evicted. A row whose GPU_MAX_K best candidates are all evicted
    answers -1 (a miss: its nearest live entry is further than thousands of evicted ones).
    """
    n = len(queries)
    best_scores = np.full(n, -np.inf, dtype=np.float32)
    best_positions = np.full(n, -1, dtype=np.int64)
    pending = np.arange(n)
    k = min(FILTER_FIRST_K, ntotal)
    while pending.size and k > 0:
        scores, positions = search(np.ascontiguousarray(queries[pending]), k)
        live = (positions >= 0) & is_live(np.maximum(positions, 0))
        found = live.any(axis=1)
        first = live.argmax(axis=1)
        rows = pending[found]
        best_scores[rows] = scores[found, first[found]]
        best_positions[rows] = positions[found, first[found]]
        if k >= min(ntotal, GPU_MAX_K):
            break
        pending = pending[~found]
        k = min(k * FILTER_GROWTH, ntotal, GPU_MAX_K)
    return best_scores, best_positions
