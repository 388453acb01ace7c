"""The vector index: exact below hnsw_min_entries, IVF or HNSW at or above, tombstones, switching, threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from cache_testkit import DIM, add_seeded, add_seeded_batch, near_duplicate, unit_vector

from modm.cache import IndexKind
from modm.cache.index import IndexBuild, NamespaceIndex

APPROXIMATE = [IndexKind.IVF, IndexKind.HNSW]


def _near_duplicate_queries(ids, cosine=0.9):
    return np.stack([near_duplicate(unit_vector(i), cosine, seed=7_000 + i) for i in ids])


@pytest.mark.parametrize("kind", APPROXIMATE)
def test_approximate_search_returns_the_same_top1_as_exact_search(open_cache, tmp_path, kind):
    exact = open_cache(directory=tmp_path / "exact", capacity=400)
    approximate = open_cache(
        directory=tmp_path / "approximate", capacity=400, hnsw_min_entries=50, hnsw_m=16, large_index=kind.value
    )
    for start in range(0, 300, 25):  # the alice namespace switches part way through
        add_seeded_batch(exact, range(start, start + 25), lambda seed: ("alice", "bob")[seed % 7 == 0])
        add_seeded_batch(approximate, range(start, start + 25), lambda seed: ("alice", "bob")[seed % 7 == 0])
    assert approximate.stats().namespaces["alice"].index_kind is kind  # 257 entries
    assert approximate.stats().namespaces["bob"].index_kind is IndexKind.FLAT  # 43 entries
    assert exact.stats().namespaces["alice"].index_kind is IndexKind.FLAT

    queries = _near_duplicate_queries(range(300))
    scopes = [["alice", "bob"]] * 300
    from_exact, from_approximate = exact.query_batch(queries, scopes), approximate.query_batch(queries, scopes)
    assert [m.entry_id for m in from_approximate] == [m.entry_id for m in from_exact] == list(range(300))
    np.testing.assert_allclose([m.score for m in from_approximate], [m.score for m in from_exact], atol=1e-5)


@pytest.mark.parametrize("kind", APPROXIMATE)
def test_approximate_search_never_returns_evicted_entries_and_rebuilds_past_the_tombstone_fraction(open_cache, kind):
    cache = open_cache(capacity=100, hnsw_min_entries=40, hnsw_m=16, large_index=kind.value)
    for start in range(0, 260, 10):
        add_seeded_batch(cache, range(start, start + 10))
    stats = cache.stats().namespaces["alice"]
    assert stats.index_kind is kind and stats.entries == 100
    assert stats.hnsw_builds >= 2  # the switch plus at least one tombstone rebuild
    assert stats.tombstones <= 0.25 * (100 + stats.tombstones)

    evicted = cache.query_batch(np.stack([unit_vector(i) for i in range(160)]), [["alice"]] * 160)
    assert all(m.entry_id >= 160 for m in evicted)  # even an evicted entry's own embedding finds a live one
    live = cache.query_batch(_near_duplicate_queries(range(160, 260)), [["alice"]] * 100)
    assert [m.entry_id for m in live] == list(range(160, 260))


@pytest.mark.parametrize("kind", APPROXIMATE)
def test_namespace_switches_back_to_exact_below_the_hysteresis_band(open_cache, kind):
    cache = open_cache(capacity=40, hnsw_min_entries=20, large_index=kind.value)  # approximate from 20, exact below 18
    kinds = []
    for seed in range(40):
        add_seeded(cache, seed, tenant="alice")
    kinds.append(cache.stats().namespaces["alice"].index_kind)
    for seed in range(40, 62):  # bob's admissions evict alice's oldest entries one by one
        add_seeded(cache, seed, tenant="bob")
        kinds.append(cache.stats().namespaces["alice"].index_kind)
    alice_sizes = list(range(40, 17, -1))
    assert kinds[0] is kind
    for size, seen in zip(alice_sizes, kinds):
        assert seen is (kind if size >= 18 else IndexKind.FLAT), size
    assert cache.stats().namespaces["bob"].index_kind is kind  # 22 entries
    assert cache.query(unit_vector(30), ["alice"]).entry_id == 30


@pytest.mark.parametrize("kind", APPROXIMATE)
def test_reopen_builds_the_approximate_index_directly(open_cache, cache_dir, kind):
    cache = open_cache(capacity=200, hnsw_min_entries=30, large_index=kind.value)
    for seed in range(60):
        add_seeded(cache, seed)
    cache.close()
    reopened = open_cache(capacity=200, hnsw_min_entries=30, large_index=kind.value)
    stats = reopened.stats().namespaces["alice"]
    assert (stats.index_kind, stats.hnsw_builds, stats.tombstones) == (kind, 1, 0)
    assert [m.entry_id for m in reopened.query_batch(_near_duplicate_queries(range(60)), [["alice"]] * 60)] == list(
        range(60)
    )


@pytest.mark.parametrize("kind", APPROXIMATE)
def test_namespace_index_contract(kind):
    index = NamespaceIndex(
        DIM,
        hnsw_min_entries=3,
        hnsw_exit_entries=2,
        hnsw_m=8,
        hnsw_ef_search=16,
        hnsw_ef_construction=16,
        tombstone_rebuild_fraction=0.5,
        large_kind=kind,
    )
    scores, ids = index.search(unit_vector(0)[None])
    assert ids.tolist() == [-1] and np.isneginf(scores).all()
    index.add(np.array([5, 6], dtype=np.int64), np.stack([unit_vector(5), unit_vector(6)]))
    with pytest.raises(ValueError, match="entry id 5 is already in the index"):
        index.add(np.array([5], dtype=np.int64), unit_vector(5)[None])
    index.add(np.array([7], dtype=np.int64), unit_vector(7)[None])
    assert index.kind is kind
    index.remove([6])
    assert (index.kind, index.tombstones, len(index)) == (kind, 1, 2)
    assert index.search(unit_vector(6)[None])[1][0] in (5, 7)
    index.remove([5])
    assert index.kind is IndexKind.FLAT and index.tombstones == 0
    assert index.search(unit_vector(7)[None])[1].tolist() == [7]
    with pytest.raises(ValueError, match="hnsw_exit_entries"):
        NamespaceIndex(
            DIM,
            hnsw_min_entries=3,
            hnsw_exit_entries=4,
            hnsw_m=8,
            hnsw_ef_search=16,
            hnsw_ef_construction=16,
            tombstone_rebuild_fraction=0.5,
        )


def test_concurrent_admissions_and_queries(open_cache):
    cache = open_cache(capacity=50, hnsw_min_entries=20, compact_every=16)
    errors = []

    def admit(worker):
        try:
            for i in range(30):
                add_seeded(cache, 1_000 * worker + i, tenant=f"t{worker % 2}")
        except Exception as err:  # surfaced below
            errors.append(err)

    def search():
        try:
            for i in range(150):
                cache.query(unit_vector(i), ["t0", "t1"])
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=admit, args=(w,)) for w in range(4)] + [threading.Thread(target=search)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    entries = cache.entries()
    assert len(entries) == 50 and [e.id for e in entries] == list(range(70, 120))
    for entry in entries:
        seed = int(entry.prompt.split()[-1])
        assert cache.query(unit_vector(seed), [entry.tenant]).entry_id == entry.id


class GatedBuilds:
    """Holds every background index build at its start until released (or until the cache asks it to stop)."""

    def __init__(self, monkeypatch):
        self.release = threading.Event()
        self.started = threading.Event()
        real_run = IndexBuild.run

        def gated_run(build, should_stop=lambda: False):
            self.started.set()
            while not self.release.is_set() and not should_stop():
                self.release.wait(0.01)
            return real_run(build, should_stop)

        monkeypatch.setattr(IndexBuild, "run", gated_run)


@pytest.mark.parametrize("kind", APPROXIMATE)
@pytest.mark.timeout(60)
def test_background_build_serves_exactly_meanwhile_and_replays_changes(open_cache, monkeypatch, kind):
    gate = GatedBuilds(monkeypatch)
    cache = open_cache(capacity=130, hnsw_min_entries=100, background_index_builds=True, large_index=kind.value)
    for seed in range(100):
        add_seeded(cache, seed)
    assert gate.started.wait(10)
    stats = cache.stats()
    assert stats.index_builds_running == 1 and stats.namespaces["alice"].index_kind is IndexKind.FLAT
    for seed in range(100, 160):  # admissions and 30 evictions while the graph is being built
        add_seeded(cache, seed)
    during = cache.query_batch(_near_duplicate_queries(range(30, 160)), [["alice"]] * 130)
    assert [m.entry_id for m in during] == list(range(30, 160))  # exact search answers meanwhile

    gate.release.set()
    assert cache.wait_for_index_builds(timeout_s=30)
    stats = cache.stats().namespaces["alice"]
    assert (stats.index_kind, stats.entries, stats.hnsw_builds) == (kind, 130, 1)
    after = cache.query_batch(_near_duplicate_queries(range(30, 160)), [["alice"]] * 130)
    assert [m.entry_id for m in after] == list(range(30, 160))  # entries admitted during the build included
    stale = cache.query_batch(np.stack([unit_vector(i) for i in range(30)]), [["alice"]] * 30)
    assert all(m.entry_id >= 30 for m in stale)  # entries evicted during the build excluded


@pytest.mark.parametrize("kind", APPROXIMATE)
@pytest.mark.timeout(60)
def test_close_stops_a_running_build(open_cache, cache_dir, monkeypatch, kind):
    gate = GatedBuilds(monkeypatch)
    cache = open_cache(capacity=200, hnsw_min_entries=50, background_index_builds=True, large_index=kind.value)
    for seed in range(60):
        add_seeded(cache, seed)
    assert gate.started.wait(10)
    cache.close()  # returns although the gate was never released
    assert cache.stats().index_builds_running == 0
    gate.release.set()
    reopened = open_cache(capacity=200, hnsw_min_entries=50, background_index_builds=True, large_index=kind.value)
    assert len(reopened) == 60  # answers (exactly) at once; the graph follows
    assert reopened.query(unit_vector(59), ["alice"]).entry_id == 59
    assert reopened.wait_for_index_builds(timeout_s=30)
    assert reopened.stats().namespaces["alice"].index_kind is kind


def test_a_full_cache_never_crosses_the_hnsw_threshold_while_evicting(open_cache):
    cache = open_cache(capacity=30, hnsw_min_entries=31)  # one more entry than the cache can hold
    for seed in range(45):
        add_seeded(cache, seed)
    stats = cache.stats().namespaces["alice"]
    assert (stats.index_kind, stats.hnsw_builds, stats.entries) == (IndexKind.FLAT, 0, 30)


@pytest.mark.parametrize("kind", APPROXIMATE)
@pytest.mark.timeout(60)
def test_background_tombstone_rebuilds_keep_results_exact_for_live_entries(open_cache, kind):
    cache = open_cache(
        capacity=60, hnsw_min_entries=40, hnsw_m=16, background_index_builds=True, large_index=kind.value
    )
    for seed in range(200):
        add_seeded(cache, seed)
    assert cache.wait_for_index_builds(timeout_s=30)
    stats = cache.stats().namespaces["alice"]
    assert stats.index_kind is kind and stats.hnsw_builds >= 2
    assert stats.tombstones <= 0.25 * (60 + stats.tombstones)
    found = cache.query_batch(_near_duplicate_queries(range(140, 200)), [["alice"]] * 60)
    assert [m.entry_id for m in found] == list(range(140, 200))


def test_exact_search_evicts_in_place_and_sheds_its_tombstones():
    """FIFO eviction from the exact index clears a bit (O(1)); the table is rebuilt from the live vectors once
    tombstones pass the fraction, and evicted entries are never returned meanwhile."""
    index = NamespaceIndex(
        DIM,
        hnsw_min_entries=10_000,
        hnsw_exit_entries=0,
        hnsw_m=8,
        hnsw_ef_search=16,
        hnsw_ef_construction=16,
        tombstone_rebuild_fraction=0.5,
    )
    ids = np.arange(100, 120, dtype=np.int64)
    index.add(ids, np.stack([unit_vector(int(i)) for i in ids]))
    for evicted in range(100, 109):  # 9 of 20: below the fraction, still tombstones in the table
        index.remove([evicted])
        assert index.search(unit_vector(evicted)[None])[1][0] not in range(100, evicted + 1)
    assert index._flat.tombstones == 9 and index._flat.ntotal == 20
    index.remove([109, 110])  # 11 of 20: rebuilt from the 9 live vectors
    assert index._flat.tombstones == 0 and index._flat.ntotal == 9 and len(index) == 9
    for live in range(111, 120):
        assert index.search(unit_vector(live)[None])[1].tolist() == [live]
