"""Group commit: concurrent admissions share commits, each returns once its own item is committed, and a bad item
fails alone (modm.cache.group_commit), on its own and inside the ImageCache."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from cache_testkit import DIM, add_seeded, add_seeded_batch, make_config, tiny_png, unit_vector

from modm.cache import ImageCache
from modm.cache.group_commit import GroupCommit


def test_concurrent_submits_share_commits_and_get_their_own_results():
    committed: list[list[int]] = []

    def commit(items):
        time.sleep(0.01)  # an fsync
        committed.append(list(items))
        return [item * 10 for item in items]

    group = GroupCommit(commit)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(group.submit, range(64)))
    assert results == [i * 10 for i in range(64)]
    assert sorted(i for batch in committed for i in batch) == list(range(64))  # each exactly once
    assert group.commits == len(committed) < 64 / 2  # batches formed


def test_a_bad_item_fails_alone_and_the_others_commit():
    def commit(items):
        time.sleep(0.005)
        if "bad" in items:
            raise ValueError("bad item")
        return [f"ok:{item}" for item in items]

    group = GroupCommit(commit)
    items = ["a", "b", "bad", "c", "d", "e"] * 3
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(group.submit, item) for item in items]
    for item, future in zip(items, futures):
        if item == "bad":
            with pytest.raises(ValueError, match="bad item"):
                future.result()
        else:
            assert future.result() == f"ok:{item}"


def test_max_batch_bounds_one_commit():
    sizes, gate = [], threading.Event()

    def commit(items):
        gate.wait(5)
        sizes.append(len(items))
        return list(items)

    group = GroupCommit(commit, max_batch=4)
    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(group.submit, i) for i in range(12)]
        time.sleep(0.2)  # all queued behind the first commit
        gate.set()
        assert sorted(f.result() for f in futures) == list(range(12))
    assert max(sizes) <= 4
    with pytest.raises(ValueError, match="max_batch"):
        GroupCommit(commit, max_batch=0)


def test_concurrent_cache_admissions_are_all_durable_with_fewer_commits(tmp_path):
    cache = ImageCache(make_config(tmp_path / "c", capacity=1000), 16)
    commits = []
    add_many = cache.add_many

    def counted(items):
        commits.append(len(items))
        return add_many(items)

    cache._group_commit._commit = counted

    def admit(i: int) -> int:
        return cache.add(tiny_png(i), unit_vector(i), prompt=f"p{i}", tenant="t", source_model="large", k=0).id

    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(admit, range(96)))
    assert len(set(ids)) == 96 and len(cache) == 96 and sum(commits) == 96
    assert len(commits) < 96  # admissions shared commits
    cache.close()
    reopened = ImageCache(make_config(tmp_path / "c", capacity=1000), 16)
    assert sorted(e.id for e in reopened.entries()) == sorted(ids)  # every admission survived a reopen
    reopened.close()


def test_a_bad_admission_among_concurrent_ones_fails_alone(tmp_path):
    cache = ImageCache(make_config(tmp_path / "c"), 16)

    def admit(i: int):
        png = b"not a png" if i == 5 else tiny_png(i)
        return cache.add(png, unit_vector(i), prompt=f"p{i}", tenant="t", source_model="large", k=0)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(admit, i) for i in range(12)]
    errors = [i for i, f in enumerate(futures) if f.exception() is not None]
    assert errors == [5] and len(cache) == 11
    cache.close()


def test_a_snapshot_waits_for_a_fraction_of_the_live_entries(tmp_path):
    """At scale a snapshot rewrites every live entry, so it is due only once the journal holds a fraction of them
    (JOURNAL_COMPACTION_FRACTION, 0.25), not after every `compact_every` admissions."""
    with ImageCache(make_config(tmp_path, capacity=40, compact_every=4), DIM) as cache:
        add_seeded_batch(cache, range(40))  # 40 pending >= max(4, 0.25 * 40): one snapshot
        assert cache.stats().compactions == 1
        for seed in range(100, 109):
            add_seeded(cache, seed)
        assert cache.stats().compactions == 1  # 9 admissions < 10 = 0.25 * 40
        add_seeded(cache, 109)
        assert cache.stats().compactions == 2


def test_a_failed_png_write_in_a_group_commit_leaves_no_file_and_no_entry(tmp_path, monkeypatch):
    import modm.cache.image_cache as image_cache

    real_write = image_cache.atomic_write_bytes
    calls = []

    def failing_second_write(path, data, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        real_write(path, data, **kwargs)

    with ImageCache(make_config(tmp_path), DIM) as cache:
        monkeypatch.setattr(image_cache, "atomic_write_bytes", failing_second_write)
        with pytest.raises(OSError, match="disk full"):
            add_seeded_batch(cache, range(4))  # PNGs are written in parallel; one fails
        assert not list((tmp_path / "images").glob("*.png"))
        assert cache.stats().entries == 0
        monkeypatch.setattr(image_cache, "atomic_write_bytes", real_write)
        add_seeded_batch(cache, range(4))
        assert cache.stats().entries == 4
    with ImageCache(make_config(tmp_path), DIM) as reopened:
        assert reopened.stats().entries == 4
