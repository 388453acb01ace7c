"""What `add` returning means: the entry's PNG and its journal segment are fsynced and renamed into place, the
PNG before the segment whose rename commits it, so a committed entry survives a power loss and not only the death
of the process (which the crash tests cover)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cache_testkit import add_seeded

import modm.cache.layout


@pytest.fixture
def disk_events(monkeypatch):
    """The cache's fsyncs and renames, in order: ("fsync", path) or ("rename", target path)."""
    events: list[tuple[str, Path]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    def replace(src, dst):
        real_replace(src, dst)
        events.append(("rename", Path(dst)))

    monkeypatch.setattr(modm.cache.layout.os, "fsync", fsync)
    monkeypatch.setattr(modm.cache.layout.os, "replace", replace)
    return events


def relative(events, root: Path) -> list[tuple[str, str]]:
    return [(kind, str(path.resolve().relative_to(root.resolve()))) for kind, path in events]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names fsynced descriptors through /proc")
def test_an_add_is_fsynced_and_committed_before_it_returns(open_cache, cache_dir, disk_events):
    cache = open_cache(durable=True)
    disk_events.clear()  # opening wrote the manifest
    entry = add_seeded(cache, 0)

    png = f"images/{entry.id:012d}.png"
    segment = f"journal/{entry.id:012d}-{entry.id:012d}.parquet"
    assert relative(disk_events, cache_dir) == [
        ("fsync", png + ".tmp"),
        ("rename", png),
        ("fsync", "images"),  # the image, durable first
        ("fsync", segment + ".tmp"),
        ("rename", segment),
        ("fsync", "journal"),  # then the commit point
    ]


def test_a_non_durable_cache_still_renames_atomically_but_skips_fsync(open_cache, cache_dir, disk_events):
    cache = open_cache(durable=False)
    disk_events.clear()
    entry = add_seeded(cache, 0)
    assert relative(disk_events, cache_dir) == [
        ("rename", f"images/{entry.id:012d}.png"),
        ("rename", f"journal/{entry.id:012d}-{entry.id:012d}.parquet"),
    ]
