"""The IVF large-namespace index: list counts, probing fewer lists than it has, and its configuration."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from pydantic import ValidationError

from modm.cache import IndexKind
from modm.cache.index import IvfParams, IvfTable, NamespaceIndex
from modm.config import CacheConfig


def test_list_count_follows_the_namespace_size():
    auto = IvfParams(nprobe=8)
    assert [auto.lists_for(n) for n in (100_000, 1_000_000)] == [1024, 4096]
    assert auto.lists_for(100) == 2  # never fewer than 39 training points per list
    assert auto.lists_for(1) == 1
    assert IvfParams(nprobe=8, nlist=64).lists_for(100_000) == 64


def test_probe_count_follows_the_list_count():
    auto = IvfParams()
    assert [auto.probes_for(nlist) for nlist in (1024, 4096)] == [48, 96]  # the measured recall@1 >= 0.99 points
    assert [auto.probes_for(nlist) for nlist in (2, 256)] == [2, 48]  # small namespaces: at least 48, at most all
    assert IvfParams(nprobe=8).probes_for(4096) == 8


@pytest.mark.parametrize(
    ("dim", "codes"),
    [(256, faiss.IndexIVFPQFastScan), (64, faiss.IndexIVFScalarQuantizer), (258, faiss.IndexIVFScalarQuantizer)],
)
def test_ivf_lists_hold_product_codes_from_256_dimensions(dim, codes):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2000, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    table = IvfTable(x, 16, IvfParams(nprobe=4))
    assert isinstance(faiss.downcast_index(table._lists), codes)
    ids = np.arange(2000, dtype=np.int64) + 10_000
    table.append(ids, x)
    _, found = table.search(x[:100])
    assert (found == ids[:100]).mean() >= 0.95  # re-ranked exactly: a vector's own entry wins where it is probed
    table.remove(ids[:100].tolist())  # tombstones: never returned
    _, found = table.search(x[:100])
    assert not np.isin(found, ids[:100]).any()


def _clustered(rng, n, dim, centres):
    x = centres[rng.integers(len(centres), size=n)] + 0.3 * rng.standard_normal((n, dim), dtype=np.float32)
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def test_ivf_probes_a_few_lists_and_finds_near_duplicates():
    rng = np.random.default_rng(0)
    dim = 16
    centres = rng.standard_normal((32, dim), dtype=np.float32)
    gallery = _clustered(rng, 3000, dim, centres)
    index = NamespaceIndex(
        dim,
        hnsw_min_entries=1000,
        hnsw_exit_entries=900,
        hnsw_m=8,
        hnsw_ef_search=16,
        hnsw_ef_construction=16,
        tombstone_rebuild_fraction=0.25,
        large_kind=IndexKind.IVF,
        ivf_nprobe=4,
        ivf_nlist=64,
    )
    index.add(np.arange(3000, dtype=np.int64), gallery)
    assert index.kind is IndexKind.IVF and index._large.nlist == 64
    noise = 0.05 * rng.standard_normal((300, dim), dtype=np.float32)
    queries = gallery[:300] + noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = np.argmax(queries @ gallery.T, axis=1)
    _, ids = index.search(np.ascontiguousarray(queries))
    assert (ids == exact).mean() >= 0.95
    # far-off queries probe 4 of 64 lists: some miss the exact top-1 (the index is approximate, not a flat scan)
    far = np.ascontiguousarray(_clustered(rng, 300, dim, rng.standard_normal((300, dim), dtype=np.float32)))
    _, far_ids = index.search(far)
    assert (far_ids != np.argmax(far @ gallery.T, axis=1)).any()


def test_bad_ivf_settings_are_refused():
    bad_settings = ({"ivf_nprobe": -1}, {"ivf_nlist": -1}, {"ivf_refine_k_factor": 0.5}, {"large_index": "flat"})
    for bad in bad_settings:
        with pytest.raises(ValidationError):
            CacheConfig(**bad)
    with pytest.raises(ValueError, match="ivf_nprobe"):
        NamespaceIndex(
            16,
            hnsw_min_entries=10,
            hnsw_exit_entries=9,
            hnsw_m=8,
            hnsw_ef_search=16,
            hnsw_ef_construction=16,
            tombstone_rebuild_fraction=0.25,
            ivf_nprobe=-1,
        )


def test_a_growing_namespace_retrains_its_lists():
    rng = np.random.default_rng(1)
    dim = 8
    index = NamespaceIndex(
        dim,
        hnsw_min_entries=100,
        hnsw_exit_entries=90,
        hnsw_m=8,
        hnsw_ef_search=16,
        hnsw_ef_construction=16,
        tombstone_rebuild_fraction=0.25,
        large_kind=IndexKind.IVF,
        ivf_nprobe=1,
    )
    x = rng.standard_normal((1000, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    nlists = []
    for start in range(0, 1000, 50):
        index.add(np.arange(start, start + 50, dtype=np.int64), x[start : start + 50])
        nlists.append(index._large.nlist if index.kind is IndexKind.IVF else 0)
    # built at 100 entries with 2 lists (39 training points a list); retrained when the size asks for twice as many
    assert sorted(set(nlists) - {0}) == [2, 5, 10, 20]  # at 100, 200, 400 and 800 entries
    assert index.builds == 4
    _, ids = index.search(x[:50])
    assert (ids == np.arange(50)).mean() > 0.5  # nprobe 1: approximate, but its own vector is usually found
