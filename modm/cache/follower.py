"""CacheFollower: a read-only replica of an image cache directory, following the journal of its single writer.

The writer (one ImageCache, holding the directory lock) commits every admission batch as one journal segment
(renamed into place: a follower never sees half of one), records FIFO evictions as a watermark in each segment, and
every `compact_every` admissions folds the journal into a snapshot and deletes the segments it supersedes. A
follower takes no lock and writes nothing. It loads the newest committed state, then each `refresh()` lists the
directory and applies what is new, in order:

- segments after the last id it has: their entries are added, entries below their watermark are evicted;
- if the writer compacted away segments the follower had not read yet, the entries it missed are taken from the
  newer snapshot (the rows at or above its next id), then the segments after that snapshot;
- if the directory was replaced (a new manifest) or moved backwards, everything is loaded again.

A query answers from the follower's view, which is at most one refresh behind the writer (`stats().behind_s`).
An entry the writer evicted after that view has lost its PNG: `get_png` raises EntryNotFoundError (a miss to the
caller) and the entry leaves the view at once.

Search is the writer's: one NamespaceIndex per tenant, built with the writer's options. HNSW graphs are built inline
by the refresh that makes them due, so that replica's queries wait for the build.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from modm.cache.constants import HNSW_HYSTERESIS_FRACTION, TOMBSTONE_REBUILD_FRACTION
from modm.cache.errors import CacheClosedError, CacheCorruptError, EntryNotFoundError
from modm.cache.index import NamespaceIndex, namespace_index_options
from modm.cache.journal import FileVanishedError, StoredRows, read_committed, read_marks, read_rows
from modm.cache.layout import CacheLayout
from modm.cache.scoped_search import ScopedEntryView
from modm.cache.records import CacheEntry
from modm.config.schema import CacheConfig

__all__ = ["CacheFollower", "FollowerStats"]

logger = logging.getLogger(__name__)

# A refresh lists the directory again when a file it listed was deleted by a compaction before it was read; a
# writer compacting this often in a row is pathological, and the next refresh tries again.
LIST_ATTEMPTS = 8


@dataclass(frozen=True)
class FollowerStats:
    directory: str
    dim: int
    entries: int
    namespaces: int
    next_id: int  # every id below this is in the view, or was evicted or never committed
    # How far behind the writer: ids committed at the last refresh's listing and not yet applied (a segment that did
    # not read back), and seconds since the listing of the last refresh that applied everything it found.
    behind_entries: int
    behind_s: float
    # Counters since this follower was opened.
    refreshes: int
    segments_applied: int
    snapshot_catch_ups: int  # compactions that outran the follower: the missed entries came from a snapshot
    reloads: int  # full loads after the first (the directory was replaced)
    refresh_failures: int
    vanished_images: int  # entries whose PNG the writer had deleted (evicted after this view): left the view
    queries: int
    matches: int


@dataclass(frozen=True)
class _FileIdentity:
    """Which file a name stood for when it was listed (a snapshot is rewritten under its name when the writer
    reopens and drops entries)."""

    name: str
    inode: int
    mtime_ns: int

    @classmethod
    def of(cls, path) -> _FileIdentity | None:
        try:
            status = os.stat(path)
        except FileNotFoundError:
            return None
        return cls(path.name, status.st_ino, status.st_mtime_ns)


class CacheFollower(ScopedEntryView):
    """A read-only view of the image cache in `config.directory`, kept current by `refresh()` (or by `follow()`,
    a thread that refreshes every `config.follow_interval_s`). All public methods may be called from several
    threads.

    Opening raises FileNotFoundError while no writer has created the cache, and CacheCorruptError (CacheDimension-
    Error for another embedding size) for a directory that is not such a cache; it changes nothing in either case.
    """

    def __init__(self, config: CacheConfig, dim: int, *, clock: Callable[[], float] = time.monotonic):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.config = config
        self.dim = dim
        self._clock = clock
        # The construction ImageCache uses, so that a follower answers as the writer would.
        self._index_options = namespace_index_options(
            config, tombstone_rebuild_fraction=TOMBSTONE_REBUILD_FRACTION, hysteresis_fraction=HNSW_HYSTERESIS_FRACTION
        )
        self._layout = CacheLayout(config.directory)
        self._lock = threading.RLock()  # guards the view and the counters
        self._refresh_lock = threading.Lock()  # one refresh at a time; files are read outside self._lock
        self._entries: OrderedDict[int, CacheEntry] = OrderedDict()  # the view, oldest first
        self._indexes: dict[str, NamespaceIndex] = {}
        self._next_id = self._evicted_below = 0
        self._snapshot: _FileIdentity | None = None  # the newest snapshot the view accounts for
        self._snapshot_next_id = 0
        self._manifest: _FileIdentity | None = None
        self._behind_entries, self._caught_up_at = 0, self._clock()
        self._refreshes = self._segments_applied = self._catch_ups = self._reloads = self._refresh_failures = 0
        self._vanished = self._queries = self._matches = 0
        self._closed = False
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None
        with self._refresh_lock:
            self._load()
        logger.info(
            "cache follower: opened %s with %d entries in %d namespaces (next id %d)",
            self._layout.root,
            len(self._entries),
            len(self._indexes),
            self._next_id,
        )

    # ------------------------------------------------------------------------------------------------ access
    def get_png(self, entry_id: int) -> bytes:
        """The PNG of an entry in the view. EntryNotFoundError if it is not in the view, or if the writer has
        evicted it since (its PNG is gone; the entry leaves the view): a miss to the caller."""
        with self._lock:
            self._check_open()
            if entry_id not in self._entries:
                raise EntryNotFoundError(entry_id)
        try:
            return self._layout.image_path(entry_id).read_bytes()
        except FileNotFoundError:
            # Committed entries keep their PNG until the writer evicts them, so this one is gone for the writer too.
            with self._lock:
                if entry_id in self._entries:
                    self._remove([self._entries.pop(entry_id)])
                    self._vanished += 1
            raise EntryNotFoundError(entry_id) from None

    def stats(self) -> FollowerStats:
        with self._lock:
            return FollowerStats(
                directory=str(self._layout.root),
                dim=self.dim,
                entries=len(self._entries),
                namespaces=len(self._indexes),
                next_id=self._next_id,
                behind_entries=self._behind_entries,
                behind_s=max(0.0, self._clock() - self._caught_up_at),
                refreshes=self._refreshes,
                segments_applied=self._segments_applied,
                snapshot_catch_ups=self._catch_ups,
                reloads=self._reloads,
                refresh_failures=self._refresh_failures,
                vanished_images=self._vanished,
                queries=self._queries,
                matches=self._matches,
            )

    # --------------------------------------------------------------------------------------------- following
    def refresh(self) -> int:
        """Apply what the writer has committed since the last refresh; returns the entries added to the view.

        Raises CacheCorruptError for a directory that can no longer be followed (the view stays as it was).
        """
        with self._refresh_lock:
            self._check_open()
            for _ in range(LIST_ATTEMPTS):
                try:
                    added = self._refresh_once()
                except FileVanishedError:
                    continue  # a compaction superseded a listed file before it was read: list again
                with self._lock:
                    self._refreshes += 1
                return added
            logger.warning(
                "cache follower: %s kept changing under %d listings; next refresh", self._layout.root, LIST_ATTEMPTS
            )
            return 0

    def follow(self, interval_s: float | None = None) -> None:
        """Refresh on a daemon thread every `interval_s` (default `config.follow_interval_s`) until close()."""
        interval_s = self.config.follow_interval_s if interval_s is None else interval_s
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        with self._lock:
            self._check_open()
            if self._follower is not None:
                raise RuntimeError("this follower is already following")
            self._follower = threading.Thread(
                target=self._follow_loop, args=(interval_s,), name="modm-cache-follower", daemon=True
            )
            self._follower.start()

    def _follow_loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.refresh()
            except CacheClosedError:
                return
            except Exception:  # the view stays as it was; the lag shows in stats
                with self._lock:
                    self._refresh_failures += 1
                logger.exception("cache follower: refreshing from %s failed; will retry", self._layout.root)

    def close(self) -> None:
        self._stop.set()
        if self._follower is not None and self._follower is not threading.current_thread():
            self._follower.join()
        with self._refresh_lock, self._lock:
            self._closed = True

    def __enter__(self) -> CacheFollower:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------ reading
    def _load(self) -> None:
        """Replace the view with the directory's newest committed state."""
        for _ in range(LIST_ATTEMPTS):
            self._layout.check_existing(self.dim)
            manifest = _FileIdentity.of(self._layout.manifest)
            try:
                committed = read_committed(self._layout, self.dim)
            except FileVanishedError:
                continue
            listed_at = self._clock()
            with self._lock:
                self._entries.clear()
                self._indexes.clear()
                self._next_id, self._evicted_below = committed.next_id, committed.evicted_below
                self._manifest = manifest
                self._snapshot_next_id = committed.snapshot_next_id or 0
                self._snapshot = None if committed.snapshot_path is None else _FileIdentity.of(committed.snapshot_path)
                self._apply_rows(committed.entries, committed.vectors, committed.evicted_below)
                self._behind_entries, self._caught_up_at = 0, listed_at
            return
        raise CacheCorruptError(self._layout.root, f"the journal changed under {LIST_ATTEMPTS} consecutive reads")

    def _refresh_once(self) -> int:
        listed_at = self._clock()
        if _FileIdentity.of(self._layout.manifest) != self._manifest:
            return self._reload("its manifest was replaced")
        # Segments before snapshots (see journal.read_committed): a segment missing here was folded into a snapshot
        # that the second listing sees.
        segments = self._layout.list_segments()
        snapshots = self._layout.list_snapshots()
        next_id = self._next_id
        batches: list[StoredRows] = []
        snapshot, snapshot_next_id, caught_up_from_snapshot = self._snapshot, self._snapshot_next_id, False
        if snapshots:
            snapshot_next_id, snapshot_path = snapshots[-1]
            if snapshot_next_id < self._snapshot_next_id:
                return self._reload("its newest snapshot is older than the one this view is based on")
            identity = _FileIdentity.of(snapshot_path)
            if identity is None:
                raise FileVanishedError(snapshot_path, "superseded while listing")
            if identity != self._snapshot:
                pending = [ids for ids, _ in segments if ids[1] >= next_id]
                if snapshot_next_id > next_id and not _chain(pending, next_id, snapshot_next_id):
                    # The writer compacted segments this view had not read: the entries it missed are in the snapshot.
                    rows = read_rows(snapshot_path, self.dim)
                    tail = [i for i, e in enumerate(rows.entries) if e.id >= next_id]
                    batches.append(
                        StoredRows(
                            entries=[rows.entries[i] for i in tail],
                            vectors=rows.vectors[tail],
                            next_id=rows.next_id,
                            evicted_below=rows.evicted_below,
                        )
                    )
                    next_id, caught_up_from_snapshot = rows.next_id, True
                else:  # only its watermark can be news (a reopened writer may have shrunk the capacity)
                    _, evicted_below = read_marks(snapshot_path)
                    batches.append(StoredRows([], np.empty((0, self.dim), np.float32), next_id, evicted_below))
                snapshot = identity
        unread, segments_read = 0, 0
        for position, ((first_id, last_id), path) in enumerate(segments):
            if last_id < next_id:
                continue
            if first_id < next_id:
                raise CacheCorruptError(path, f"overlaps ids below {next_id} that this view already holds")
            try:
                rows = read_rows(path, self.dim)
            except FileVanishedError:
                raise
            except CacheCorruptError:
                if position != len(segments) - 1:
                    raise
                logger.warning("cache follower: newest journal segment %s does not read back; retrying later", path)
                unread = last_id - first_id + 1
                break
            batches.append(rows)
            next_id, segments_read = last_id + 1, segments_read + 1
        with self._lock:
            before = len(self._entries)
            for rows in batches:
                self._apply_rows(rows.entries, rows.vectors, rows.evicted_below)
            self._next_id, self._snapshot, self._snapshot_next_id = next_id, snapshot, snapshot_next_id
            self._segments_applied += segments_read
            self._catch_ups += caught_up_from_snapshot
            self._behind_entries = unread
            if not unread:
                self._caught_up_at = listed_at
            return max(0, len(self._entries) - before)

    def _reload(self, why: str) -> int:
        logger.warning("cache follower: %s: %s; loading it again", self._layout.root, why)
        before = len(self._entries)
        self._load()
        with self._lock:
            self._reloads += 1
            return max(0, len(self._entries) - before)

    # ------------------------------------------------------------------------------------------------- memory
    def _apply_rows(self, entries: list[CacheEntry], vectors: np.ndarray, evicted_below: int) -> None:
        """Evict below the watermark, then add the entries at or above it (as the writer evicts before inserting)."""
        self._evicted_below = max(self._evicted_below, evicted_below)
        evicted = []
        while self._entries:
            oldest_id = next(iter(self._entries))
            if oldest_id >= self._evicted_below:
                break
            evicted.append(self._entries.popitem(last=False)[1])
        self._remove(evicted)
        by_tenant: dict[str, list[int]] = {}
        for row, entry in enumerate(entries):
            if entry.id < self._evicted_below or entry.id in self._entries:
                continue
            self._entries[entry.id] = entry
            by_tenant.setdefault(entry.tenant, []).append(row)
        for tenant, rows in by_tenant.items():
            index = self._indexes.get(tenant)
            if index is None:
                index = self._indexes[tenant] = NamespaceIndex(self.dim, **self._index_options)
            ids = np.array([entries[r].id for r in rows], dtype=np.int64)
            index.add(ids, np.ascontiguousarray(vectors[rows], dtype=np.float32))

    def _remove(self, evicted: list[CacheEntry]) -> None:
        by_tenant: dict[str, list[int]] = {}
        for entry in evicted:
            by_tenant.setdefault(entry.tenant, []).append(entry.id)
        for tenant, ids in by_tenant.items():
            index = self._indexes[tenant]
            index.remove(ids)
            if not len(index):
                del self._indexes[tenant]

    def _check_open(self) -> None:
        if self._closed:
            raise CacheClosedError(f"the follower of {self._layout.root} is closed")


def _chain(segments: list[tuple[int, int]], start: int, until: int) -> bool:
    """Whether `segments` ((first, last) id ranges, in order) cover every id from `start` up to `until` - 1."""
    expected = start
    for first_id, last_id in segments:
        if expected >= until:
            return True
        if first_id != expected:
            return False
        expected = last_id + 1
    return expected >= until
