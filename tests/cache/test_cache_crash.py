"""A crash in the middle of a write: reopening gives exactly the committed entries, and nothing corrupt.

Real crashes: a child process is SIGKILLed (by itself at each point of an admission and of a compaction, or by
the test at an arbitrary moment). Hand-made wreckage: stray tmp files, an image without a segment, torn files.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cache_testkit import DIM, add_seeded, make_config, tiny_png, unit_vector
from test_cache_persistence import crash_copy

from modm.cache import CacheCorruptError, ImageCache

CHILD = Path(__file__).with_name("cache_crash_child.py")
CAPACITY, COMPACT_EVERY = 4, 3


def _run_child(directory, kill_point="none", kill_at_id=-1, kill_after_lines=None):
    """Run the child until it dies; return the ids it reported as added (returned from `add`)."""
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(directory), str(CAPACITY), str(COMPACT_EVERY), kill_point, str(kill_at_id)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reported = []
    try:
        if kill_after_lines is not None:
            while len(reported) < kill_after_lines:
                line = child.stdout.readline()
                assert line, f"child exited early: {child.stderr.read()}"
                reported.append(int(line))
            time.sleep(random.Random(kill_after_lines).uniform(0.0, 0.01))  # land anywhere in the next add
            child.send_signal(signal.SIGKILL)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL, err
    return reported + [int(line) for line in out.split()]


def _assert_exactly(directory, live_ids):
    """The reopened cache holds exactly `live_ids`, intact, with no stray files; admissions continue."""
    with ImageCache(make_config(directory, capacity=CAPACITY, compact_every=COMPACT_EVERY), DIM) as cache:
        assert [e.id for e in cache.entries()] == live_ids
        for entry_id in live_ids:
            assert cache.get_png(entry_id) == tiny_png(entry_id)
            match = cache.query(unit_vector(entry_id), ["alice", "bob"])
            assert match.entry_id == entry_id and match.score == pytest.approx(1.0, abs=1e-5)
            assert match.entry.tenant == ("alice", "bob")[entry_id % 2]
        files = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
        assert [f for f in files if f.startswith("images")] == [f"images/{i:012d}.png" for i in live_ids]
        assert not [f for f in files if f.endswith(".tmp") or f.startswith("journal")]
        assert len([f for f in files if f.startswith("snapshots")]) == 1
        next_id = add_seeded(cache, 1000).id
    assert next_id == (live_ids[-1] + 1 if live_ids else 0)


@pytest.mark.parametrize(
    ("kill_point", "kill_at_id", "committed_through"),
    [
        ("png_renamed", 6, 5),  # image written, no segment: not committed
        ("segment_tmp_written", 6, 5),  # segment complete under its tmp name: not committed
        ("before_eviction", 6, 6),  # committed; the evicted entry's image is still on disk
        ("snapshot_tmp_written", 5, 5),  # compaction after admission 5 dies before its rename
        ("snapshot_renamed", 5, 5),  # ... or after it, before deleting the segments it covers
    ],
)
def test_sigkill_inside_an_admission(cache_dir, kill_point, kill_at_id, committed_through):
    reported = _run_child(cache_dir, kill_point, kill_at_id)
    assert reported == list(range(kill_at_id))  # the child died inside add(kill_at_id)
    _assert_exactly(cache_dir, list(range(committed_through + 1))[-CAPACITY:])


def test_crash_before_deleting_an_evicted_image_then_capacity_grows(cache_dir):
    _run_child(cache_dir, "before_eviction", 6)  # entry 2 was evicted by the commit of 6; its image remains
    with ImageCache(make_config(cache_dir, capacity=100), DIM) as cache:
        assert [e.id for e in cache.entries()] == [3, 4, 5, 6]
    assert not (cache_dir / "images" / "000000000002.png").exists()


def test_sigkill_at_an_arbitrary_moment(cache_dir):
    reported = _run_child(cache_dir, kill_after_lines=14)  # past several compactions and evictions
    last = reported[-1]
    with ImageCache(make_config(cache_dir, capacity=CAPACITY, compact_every=COMPACT_EVERY), DIM) as cache:
        ids = [e.id for e in cache.entries()]
    # Every reported admission survived; the one in flight may or may not have committed.
    assert ids in (list(range(last + 1))[-CAPACITY:], list(range(last + 2))[-CAPACITY:])
    _assert_exactly(cache_dir, ids)


def test_restart_after_a_crash_keeps_going(cache_dir):
    _run_child(cache_dir, "segment_tmp_written", 4)
    reported = _run_child(cache_dir, "png_renamed", 9)
    assert reported == [4, 5, 6, 7, 8]  # the second run resumed at the first uncommitted id
    _assert_exactly(cache_dir, [5, 6, 7, 8])


# ----------------------------------------------------------------------------------------- hand-made wreckage
def _journal_only_cache(open_cache, cache_dir, tmp_path, n=6):
    cache = open_cache(compact_every=1000)
    for seed in range(n):
        add_seeded(cache, seed)
    return crash_copy(cache_dir, tmp_path)


def test_stray_tmp_files_and_an_uncommitted_image_are_removed(open_cache, cache_dir, tmp_path):
    copy = _journal_only_cache(open_cache, cache_dir, tmp_path)
    (copy / "images" / "000000000006.png").write_bytes(tiny_png(6))  # image, no segment
    (copy / "images" / "000000000007.png.tmp").write_bytes(tiny_png(7)[:10])  # torn image
    (copy / "journal" / "000000000007-000000000007.parquet.tmp").write_bytes(b"PAR1")
    (copy / "snapshots" / "snapshot-000000000006.parquet.tmp").write_bytes(b"PAR1")
    (copy / "modm-cache.json.tmp").write_bytes(b"{")
    (copy / "images" / "README").write_text("an operator's note")  # not ours: left alone
    with ImageCache(make_config(copy), DIM) as cache:
        assert [e.id for e in cache.entries()] == list(range(6))
        assert add_seeded(cache, 6).id == 6
    assert not list(copy.rglob("*.tmp"))
    assert (copy / "images" / "README").exists()


def test_torn_newest_segment_counts_as_never_committed(open_cache, cache_dir, tmp_path, caplog):
    copy = _journal_only_cache(open_cache, cache_dir, tmp_path)
    newest = sorted((copy / "journal").iterdir())[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with ImageCache(make_config(copy), DIM) as cache:
        assert [e.id for e in cache.entries()] == list(range(5))
    assert not (copy / "images" / "000000000005.png").exists()
    assert "torn newest journal segment" in caplog.text


def test_torn_segment_followed_by_committed_ones_is_corruption(open_cache, cache_dir, tmp_path):
    copy = _journal_only_cache(open_cache, cache_dir, tmp_path)
    middle = sorted((copy / "journal").iterdir())[2]
    middle.write_bytes(middle.read_bytes()[:30])
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    with pytest.raises(CacheCorruptError, match="unreadable parquet file") as err:
        ImageCache(make_config(copy), DIM)
    assert err.value.path == middle
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before
