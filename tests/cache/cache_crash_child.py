"""Child process of test_cache_crash: admits seeded entries (id == seed) and prints each id once `add`
returns, until the parent SIGKILLs it or it SIGKILLs itself at a named point inside an admission.

usage: cache_crash_child.py DIRECTORY CAPACITY COMPACT_EVERY KILL_POINT KILL_AT_ID
KILL_POINT is "none" (run until killed from outside) or one of KILL_POINTS.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import cache_testkit as kit

from modm.cache import ImageCache

KILL_POINTS = ("png_renamed", "segment_tmp_written", "before_eviction", "snapshot_tmp_written", "snapshot_renamed")


def main() -> None:
    directory, capacity, compact_every, kill_point, kill_at_id = sys.argv[1:]
    kill_at_id = int(kill_at_id)
    adding = {"id": -1}

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    real_replace = os.replace

    def replace(src, dst):  # every atomic write of the cache ends in os.replace(tmp, final)
        if adding["id"] == kill_at_id:
            folder, name = Path(dst).parent.name, Path(dst).name
            if kill_point == "segment_tmp_written" and folder == "journal":
                die()  # the tmp segment is complete and fsynced; the rename (the commit) never happens
            if kill_point == "snapshot_tmp_written" and folder == "snapshots":
                die()
            real_replace(src, dst)
            if kill_point == "png_renamed" and folder == "images" and name == f"{kill_at_id:012d}.png":
                die()
            if kill_point == "snapshot_renamed" and folder == "snapshots":
                die()  # before the superseded segments are deleted
            return
        real_replace(src, dst)

    os.replace = replace
    real_evict = ImageCache._evict_oldest

    def evict_oldest(self, count):
        if kill_point == "before_eviction" and adding["id"] == kill_at_id and count:
            die()  # committed, but the evicted entry's PNG is still on disk
        return real_evict(self, count)

    ImageCache._evict_oldest = evict_oldest

    cache = ImageCache(kit.make_config(directory, capacity=int(capacity), compact_every=int(compact_every)), kit.DIM)
    seed = len(cache) and cache.entries()[-1].id + 1
    while True:
        adding["id"] = seed
        kit.add_seeded(cache, seed, tenant=("alice", "bob")[seed % 2])
        print(seed, flush=True)
        seed += 1


if __name__ == "__main__":
    main()
