"""CacheFollower against a real ImageCache writer in a temporary directory: it sees what the writer committed, in
order, never a torn state, through FIFO evictions, compactions it did not keep up with, and the writer's reopen."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from cache_testkit import DIM, add_seeded, add_seeded_batch, make_config, tiny_png, unit_vector

from modm.cache import CacheCorruptError, CacheDimensionError, EntryNotFoundError
from modm.cache.follower import CacheFollower


@pytest.fixture
def open_follower(cache_dir):
    opened = []

    def _open(dim: int = DIM, **overrides) -> CacheFollower:
        follower = CacheFollower(make_config(cache_dir, **overrides), dim)
        opened.append(follower)
        return follower

    yield _open
    for follower in opened:
        follower.close()


def ids(view) -> list[int]:
    return [e.id for e in view.entries()]


def directory_state(root) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_a_follower_sees_the_writers_admissions_after_a_refresh(open_cache, open_follower):
    writer = open_cache()
    for seed in range(3):
        add_seeded(writer, seed)
    follower = open_follower()
    assert ids(follower) == [0, 1, 2]
    for seed in range(3, 6):
        add_seeded(writer, seed)
    assert ids(follower) == [0, 1, 2]  # not before it refreshes
    assert follower.refresh() == 3
    assert ids(follower) == ids(writer) == list(range(6))
    for seed in range(6):
        query = unit_vector(seed)
        mine, theirs = follower.query(query, ["alice"]), writer.query(query, ["alice"])
        assert mine.entry_id == theirs.entry_id == seed and mine.score == pytest.approx(theirs.score)
        assert follower.get_png(seed) == tiny_png(seed)
    assert follower.refresh() == 0
    assert follower.stats().segments_applied == 3


def test_namespaces_scope_the_followers_queries(open_cache, open_follower):
    writer = open_cache()
    add_seeded(writer, 1, tenant="alice")
    add_seeded(writer, 2, tenant="bob")
    follower = open_follower()
    assert follower.query(unit_vector(2), ["alice"]).entry_id == 0  # bob's nearer entry is out of scope
    assert follower.query(unit_vector(2), ["alice", "bob"]).entry_id == 1
    assert follower.query(unit_vector(2), ["carol"]) is None
    assert sorted(follower.namespaces()) == ["alice", "bob"]


def test_fifo_evictions_follow_the_watermark(open_cache, open_follower):
    writer = open_cache(capacity=5)
    follower = open_follower(capacity=5)
    add_seeded_batch(writer, range(8))  # one commit that evicts 3 of its own entries
    follower.refresh()
    assert ids(follower) == ids(writer) == [3, 4, 5, 6, 7]
    for seed in range(8, 12):
        add_seeded(writer, seed, tenant="bob")
    follower.refresh()
    assert ids(follower) == ids(writer) == [7, 8, 9, 10, 11]
    assert follower.namespaces() == writer.namespaces()
    with pytest.raises(EntryNotFoundError):
        follower.get_png(3)


def test_an_image_the_writer_evicted_after_the_view_is_a_miss_and_leaves_the_view(open_cache, open_follower):
    writer = open_cache(capacity=3)
    add_seeded_batch(writer, range(3))
    follower = open_follower(capacity=3)
    add_seeded_batch(writer, range(3, 5))  # evicts 0 and 1 and deletes their PNGs; the follower has not refreshed
    assert follower.query(unit_vector(0), ["alice"]).entry_id == 0
    with pytest.raises(EntryNotFoundError):
        follower.get_png(0)
    assert 0 not in follower and follower.query(unit_vector(0), ["alice"]).entry_id != 0
    assert follower.stats().vanished_images == 1
    follower.refresh()
    assert ids(follower) == ids(writer) == [2, 3, 4]


def test_a_compaction_past_the_follower_is_caught_up_from_the_snapshot(open_cache, open_follower):
    writer = open_cache(capacity=6, compact_every=4)
    add_seeded_batch(writer, range(2))
    follower = open_follower(capacity=6, compact_every=4)
    for seed in range(2, 13):  # compacts twice; the segments the follower had not read are deleted
        add_seeded(writer, seed)
    follower.refresh()
    stats = follower.stats()
    assert ids(follower) == ids(writer) == list(range(7, 13))
    assert stats.snapshot_catch_ups == 1 and stats.behind_entries == 0
    for seed in ids(writer):
        assert follower.query(unit_vector(seed), ["alice"]).entry_id == seed


def test_the_writers_reopen_with_a_smaller_capacity_reaches_the_follower(open_cache, open_follower, cache_dir):
    writer = open_cache(capacity=10)
    add_seeded_batch(writer, range(8))
    follower = open_follower()
    writer.close()  # folds the journal into a snapshot
    follower.refresh()
    assert ids(follower) == list(range(8))
    reopened = open_cache(capacity=4)  # drops the 4 oldest and rewrites the snapshot under its name
    follower.refresh()
    assert ids(follower) == ids(reopened) == [4, 5, 6, 7]
    add_seeded(reopened, 8)
    follower.refresh()
    assert ids(follower) == ids(reopened) == [5, 6, 7, 8]


def test_a_replaced_directory_is_loaded_again(open_cache, open_follower, cache_dir):
    import shutil

    writer = open_cache()
    add_seeded_batch(writer, range(5))
    follower = open_follower()
    writer.close()
    shutil.rmtree(cache_dir)
    fresh = open_cache()
    add_seeded(fresh, 42)
    follower.refresh()
    assert ids(follower) == ids(fresh) == [0] and follower.stats().reloads == 1
    assert follower.get_png(0) == tiny_png(42)


def test_a_follower_changes_nothing_and_takes_no_lock(open_cache, open_follower, cache_dir):
    writer = open_cache()
    add_seeded_batch(writer, range(4))
    (cache_dir / "journal" / "000000000099-000000000099.parquet.tmp").write_bytes(b"half a segment")
    before = directory_state(cache_dir)
    follower = open_follower()
    follower.refresh()
    follower.get_png(2)
    assert directory_state(cache_dir) == before
    assert ids(follower) == [0, 1, 2, 3]  # the stray .tmp is no segment
    add_seeded(writer, 4)  # the writer keeps its lock and writes on
    follower.refresh()
    assert ids(follower) == list(range(5))


def test_a_follower_never_sees_a_torn_state(open_cache, open_follower):
    """A writer admits batches (evicting, compacting) while a follower refreshes: after each refresh the view is
    exactly the writer's live set after some commit, the newest `capacity` ids."""
    capacity = 20
    writer = open_cache(capacity=capacity, compact_every=7)
    follower = open_follower(capacity=capacity)
    stop, errors = threading.Event(), []

    def admit() -> None:
        try:
            seed = 0
            while seed < 150:
                size = 1 + seed % 3
                add_seeded_batch(writer, range(seed, seed + size), tenant_of=lambda s: ("alice", "bob")[s % 2])
                seed += size
        except Exception as err:  # surfaced by the assertion below
            errors.append(err)
        finally:
            stop.set()

    admitter = threading.Thread(target=admit)
    admitter.start()
    views = 0
    while not stop.is_set() or views == 0:
        follower.refresh()
        next_id = follower.stats().next_id
        assert ids(follower) == list(range(max(0, next_id - capacity), next_id))
        views += 1
    admitter.join()
    assert not errors, errors
    follower.refresh()
    assert ids(follower) == ids(writer) and views > 1


def test_follow_refreshes_on_its_own(open_cache, open_follower):
    writer = open_cache()
    follower = open_follower(follow_interval_s=0.02)
    follower.follow()
    add_seeded(writer, 7)
    deadline = time.monotonic() + 5
    while 0 not in follower and time.monotonic() < deadline:
        time.sleep(0.01)
    assert follower.get_png(0) == tiny_png(7)
    with pytest.raises(RuntimeError):
        follower.follow()


def test_the_follower_reports_how_far_behind_it_is(open_cache, cache_dir):
    now = [100.0]
    writer = open_cache()
    follower = CacheFollower(make_config(cache_dir), DIM, clock=lambda: now[0])
    try:
        now[0] += 3.0
        assert follower.stats().behind_s == pytest.approx(3.0)
        add_seeded(writer, 1)
        follower.refresh()
        stats = follower.stats()
        assert stats.behind_s == 0.0 and stats.behind_entries == 0 and stats.entries == 1
    finally:
        follower.close()


def test_bad_directories_get_a_clear_error_and_stay_untouched(tmp_path, open_cache):
    with pytest.raises(FileNotFoundError, match="no modm image cache"):
        CacheFollower(make_config(tmp_path / "missing"), DIM)
    assert not (tmp_path / "missing").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileNotFoundError):
        CacheFollower(make_config(foreign), DIM)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(CacheCorruptError, match="not a directory"):
        CacheFollower(make_config(a_file), DIM)
    writer = open_cache(directory=tmp_path / "cache16")
    add_seeded(writer, 1)
    with pytest.raises(CacheDimensionError, match="16-dimensional"):
        CacheFollower(make_config(tmp_path / "cache16"), DIM * 2)
    with pytest.raises(ValueError, match="dim"):
        CacheFollower(make_config(tmp_path / "cache16"), 0)


def test_a_corrupt_segment_is_a_clear_error_and_the_view_stays(open_cache, open_follower, cache_dir):
    writer = open_cache()
    add_seeded_batch(writer, range(3))
    follower = open_follower()
    add_seeded(writer, 3)
    add_seeded(writer, 4)
    segments = sorted((cache_dir / "journal").glob("*.parquet"))
    segments[-2].write_bytes(b"not parquet")  # a broken segment followed by a good one
    with pytest.raises(CacheCorruptError, match="unreadable parquet"):
        follower.refresh()
    assert ids(follower) == [0, 1, 2]
    assert follower.query(np.asarray(unit_vector(1)), ["alice"]).entry_id == 1
