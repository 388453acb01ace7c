"""The faiss-gpu code path on a CPU machine: a fake faiss GPU API (CPU indexes that, like faiss's GPU indexes,
take no search-time IDSelector) checks device selection, tombstone filtering and the refusal of 'cuda' without
GPU support."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from cache_testkit import DIM, add_seeded, near_duplicate, unit_vector

from modm.cache import ImageCache, IndexKind
from modm.cache.gpu_index import GPU_MAX_K, filtered_top1, gpu_placement
from modm.cache.index import NamespaceIndex
from modm.config import CacheConfig

pytestmark = pytest.mark.skipif(hasattr(faiss, "StandardGpuResources"), reason="faiss here has real GPU support")


class FakeGpuIndex:
    """A CPU index standing in for a GpuIndex*: adds and searches, but refuses search parameters."""

    def __init__(self, index):
        self.cpu = index

    @property
    def ntotal(self) -> int:
        return self.cpu.ntotal

    def add(self, vectors):
        self.cpu.add(vectors)

    def search(self, queries, k, params=None):
        if params is not None:
            raise AssertionError("a GPU index takes no search parameters (no IDSelector)")
        return self.cpu.search(queries, k)


@pytest.fixture
def fake_gpu(monkeypatch):
    """faiss with one fake GPU; returns the list of (gpu_id, cpu index) moved to it."""
    moved = []

    def index_cpu_to_gpu(resources, gpu_id, index):
        assert isinstance(resources, FakeResources)
        moved.append((gpu_id, index))
        return FakeGpuIndex(index)

    class FakeResources:
        pass

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "StandardGpuResources", FakeResources, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", index_cpu_to_gpu, raising=False)
    return moved


def test_device_selection_without_gpu_support(tmp_path):
    assert gpu_placement("cpu") is None
    assert gpu_placement("auto") is None  # faiss-cpu: the CPU
    with pytest.raises(RuntimeError, match="no GPU support"):
        gpu_placement("cuda")
    with pytest.raises(RuntimeError, match="no GPU support"):  # refused at startup, before any admission
        ImageCache(CacheConfig(directory=str(tmp_path / "c"), device="cuda"), DIM)
    assert not (tmp_path / "c").exists()
    with pytest.raises(ValueError, match="device"):
        CacheConfig(device="tpu")


def test_device_selection_with_a_gpu(fake_gpu):
    assert gpu_placement("cpu") is None
    assert gpu_placement("auto").gpu_id == 0
    assert gpu_placement("cuda:0").gpu_id == 0
    with pytest.raises(RuntimeError, match="sees 1 GPU"):
        gpu_placement("cuda:1")


@pytest.mark.parametrize("kind", [IndexKind.IVF, IndexKind.HNSW])
def test_cache_on_a_gpu_filters_evicted_entries(tmp_path, fake_gpu, kind):
    config = CacheConfig(
        directory=str(tmp_path / "c"), capacity=60, hnsw_min_entries=40, device="cuda", large_index=kind.value
    )
    cache = ImageCache(config, DIM, durable=False, background_index_builds=False)
    try:
        for seed in range(150):  # 90 evictions: tombstones, then rebuilds
            add_seeded(cache, seed)
        stats = cache.stats().namespaces["alice"]
        assert stats.index_kind is kind and stats.entries == 60
        moved = {type(index) for _, index in fake_gpu}
        # exact tables always go to the GPU, IVF too; HNSW has no GPU version and stays on the CPU
        assert faiss.IndexFlatIP in moved
        assert (faiss.IndexIVFFlat in moved) is (kind is IndexKind.IVF)
        stale = cache.query_batch(np.stack([unit_vector(i) for i in range(90)]), [["alice"]] * 90)
        assert all(m.entry_id >= 90 for m in stale)  # the fake GPU index returns evicted rows; they are filtered
        live = [near_duplicate(unit_vector(i), 0.9, seed=7_000 + i) for i in range(90, 150)]
        assert [m.entry_id for m in cache.query_batch(np.stack(live), [["alice"]] * 60)] == list(range(90, 150))
    finally:
        cache.close()


def test_filter_asks_for_more_candidates_when_the_nearest_are_evicted(fake_gpu):
    index = NamespaceIndex(
        DIM,
        hnsw_min_entries=10_000,
        hnsw_exit_entries=0,
        hnsw_m=8,
        hnsw_ef_search=16,
        hnsw_ef_construction=16,
        tombstone_rebuild_fraction=1.0,
        gpu=gpu_placement("cuda"),
    )
    query = unit_vector(0)
    # 40 vectors ever further from the query; the 20 nearest are evicted (more than the first 8 candidates)
    ring = np.stack([near_duplicate(query, 0.99 - 0.01 * i, seed=i) for i in range(40)])
    index.add(np.arange(40, dtype=np.int64), ring)
    index.remove(list(range(20)))
    scores, ids = index.search(query[None])
    assert ids.tolist() == [20]
    np.testing.assert_allclose(scores, ring[20] @ query, atol=1e-5)


def test_filter_answers_a_miss_when_every_candidate_is_evicted():
    calls = []

    def search(queries, k):
        calls.append(k)
        n = len(queries)
        return np.zeros((n, k), np.float32), np.tile(np.arange(k), (n, 1))

    ntotal = 10 * GPU_MAX_K
    scores, positions = filtered_top1(search, np.zeros((2, DIM), np.float32), lambda p: p >= ntotal, ntotal)
    assert positions.tolist() == [-1, -1] and np.isneginf(scores).all()
    assert calls[-1] == GPU_MAX_K and calls == sorted(calls)
