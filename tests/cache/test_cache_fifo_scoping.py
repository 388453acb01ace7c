"""FIFO eviction across tenants, tenant-scoped retrieval, the batched query, and what a query returns."""

from __future__ import annotations

import numpy as np
import pytest
from cache_testkit import DIM, add_seeded, near_duplicate, tiny_png, unit_vector

from modm.cache import EntryNotFoundError, NewEntry


def test_fifo_evicts_oldest_globally_across_tenants(open_cache):
    cache = open_cache(capacity=5)
    tenants = ["alice", "bob", "alice", "carol", "bob", "alice", "bob", "carol"]
    added = [add_seeded(cache, seed, tenant) for seed, tenant in enumerate(tenants)]

    assert [e.id for e in added] == list(range(8))  # monotonic sequence
    assert len(cache) == 5
    assert [e.id for e in cache.entries()] == [3, 4, 5, 6, 7]
    assert [e.tenant for e in cache.entries()] == tenants[3:]
    assert cache.stats().evictions == 3
    for evicted in (0, 1, 2):
        assert evicted not in cache
        with pytest.raises(EntryNotFoundError):
            cache.get_png(evicted)
    assert cache.get_png(7) == tiny_png(7)
    # An evicted entry is never returned by a query, even for its own exact embedding.
    match = cache.query(unit_vector(0), ["alice", "bob", "carol"])
    assert match is not None and match.entry_id != 0


def test_eviction_removes_emptied_namespaces_and_their_images(open_cache, cache_dir):
    cache = open_cache(capacity=2)
    add_seeded(cache, 0, "alice")
    add_seeded(cache, 1, "bob")
    add_seeded(cache, 2, "bob")
    assert cache.namespaces() == ["bob"]
    assert cache.query(unit_vector(0), ["alice"]) is None
    assert sorted(p.name for p in (cache_dir / "images").iterdir()) == ["000000000001.png", "000000000002.png"]


def test_query_is_scoped_to_the_requested_namespaces(open_cache):
    cache = open_cache()
    add_seeded(cache, 1, "alice")
    add_seeded(cache, 2, "bob")
    bob_like = near_duplicate(unit_vector(2), 0.95, seed=99)

    assert cache.query(bob_like, ["alice"]).entry_id == 0  # alice only sees her own entry
    shared = cache.query(bob_like, ["alice", "bob"])
    assert shared.entry_id == 1 and shared.entry.tenant == "bob"
    assert shared.score == pytest.approx(0.95, abs=1e-5)
    assert cache.query(bob_like, ["nobody"]) is None
    # The cross-tenant score of alice's entry is what exact search says it is.
    assert cache.query(bob_like, ["alice"]).score == pytest.approx(float(bob_like @ unit_vector(1)), abs=1e-5)


def test_match_carries_metadata_from_the_clock(cache_dir):
    from cache_testkit import make_config

    from modm.cache import ImageCache

    with ImageCache(make_config(cache_dir), DIM, clock=lambda: 1234.5) as cache:
        cache.add(tiny_png(0), unit_vector(0), prompt="a red fox", tenant="alice", source_model="sd35-large", k=15)
        match = cache.query(unit_vector(0), ["alice"])
    assert match.entry_id == 0 and match.score == pytest.approx(1.0, abs=1e-6)
    assert (
        match.entry.prompt,
        match.entry.tenant,
        match.entry.created_at,
        match.entry.source_model,
        match.entry.k,
    ) == ("a red fox", "alice", 1234.5, "sd35-large", 15)


def test_batched_query_matches_single_queries_with_per_row_scopes(open_cache):
    cache = open_cache()
    for seed, tenant in enumerate(["alice", "bob", "alice", "bob", "shared"]):
        add_seeded(cache, seed, tenant)
    queries = np.stack([near_duplicate(unit_vector(s), 0.9, seed=50 + s) for s in range(5)])
    scopes = [["alice"], ["bob"], ["bob", "shared"], ["alice", "shared"], ["carol"]]

    batched = cache.query_batch(queries, scopes)
    singles = [cache.query(q, scope) for q, scope in zip(queries, scopes)]
    assert batched == singles
    # Brute force over the entries each row may see.
    tenants = {e.id: e.tenant for e in cache.entries()}
    for row, (query, scope) in enumerate(zip(queries, scopes)):
        visible = [i for i, t in tenants.items() if t in scope]
        if not visible:
            assert batched[row] is None
            continue
        best = max(visible, key=lambda i: float(query @ unit_vector(i)))
        assert batched[row].entry_id == best
        assert batched[row].score == pytest.approx(float(query @ unit_vector(best)), abs=1e-5)
    assert [m.entry_id if m else None for m in batched][:2] == [0, 1]
    assert cache.stats().queries == 10 and cache.stats().matches == 8


def test_add_many_commits_a_batch_and_applies_capacity(open_cache):
    cache = open_cache(capacity=3)
    items = [
        NewEntry(png_bytes=tiny_png(s), embedding=unit_vector(s), prompt=f"p{s}", tenant="alice", source_model="m", k=0)
        for s in range(5)
    ]
    entries = cache.add_many(items)
    assert [e.id for e in entries] == [0, 1, 2, 3, 4]
    assert [e.id for e in cache.entries()] == [2, 3, 4]
    assert cache.query(unit_vector(4), ["alice"]).entry_id == 4
    assert cache.stats().pending_segments == 1
