"""ImageCache: final images + embeddings + metadata, tenant-scoped top-1 retrieval, FIFO eviction, persistence.

Ray-free and model-free: callers pass L2-normalised float32 embeddings in (CLIP image embeddings in MoDM mode,
prompt embeddings in text->text mode). All public methods may be called from several threads.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modm.cache.constants import (
    HNSW_HYSTERESIS_FRACTION,
    JOURNAL_COMPACTION_FRACTION,
    PNG_WRITE_THREADS,
    TOMBSTONE_REBUILD_FRACTION,
)
from modm.cache.errors import CacheClosedError, CacheCorruptError, EntryNotFoundError
from modm.cache.group_commit import GroupCommit
from modm.cache.index import IndexBuild, IndexKind, NamespaceIndex, namespace_index_options
from modm.cache.journal import StoredRows, recover, write_rows
from modm.cache.layout import CacheLayout, DirectoryLock, atomic_write_bytes, fsync_dir
from modm.cache.scoped_search import ScopedEntryView
from modm.cache.records import (
    CacheEntry,
    NewEntry,
    check_embedding,
    check_k,
    check_png,
    check_text,
)
from modm.config.schema import CacheConfig

__all__ = ["CacheStats", "ImageCache", "NamespaceStats"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NamespaceStats:
    entries: int
    index_kind: IndexKind
    tombstones: int  # evicted vectors still in an approximate index (always 0 for exact search)
    hnsw_builds: int


@dataclass(frozen=True)
class CacheStats:
    directory: str
    dim: int
    capacity: int
    entries: int
    next_id: int
    namespaces: dict[str, NamespaceStats]
    pending_segments: int  # journal segments not yet folded into a snapshot
    index_builds_running: int  # approximate indexes being built in the background
    # Counters since this ImageCache was opened.
    admissions: int
    evictions: int
    queries: int
    matches: int  # queries that found any entry in their namespaces (the hit threshold is policy's)
    compactions: int


class ImageCache(ScopedEntryView):
    """A persistent cache of generated images in `config.directory`, searchable by embedding per tenant.

    Opening recovers the last committed state (see `modm.cache.journal`); a foreign, corrupt or mismatched
    directory raises CacheCorruptError (CacheDimensionError for another embedding size) before anything in it
    changes. Only one ImageCache may have a directory open at a time (CacheLockedError otherwise).

    Every admission is fsynced before `add` returns (`durable=True`). `durable=False` keeps the cache consistent
    when the process dies but not across a power loss; it is for tests and scratch caches.

    Approximate indexes (IVF or HNSW: a namespace reaching `hnsw_min_entries`, or a rebuild to shed tombstones)
    are built on a background thread while the current index keeps answering (`background_index_builds=True`), so
    neither queries nor admissions stall for the build; `wait_for_index_builds()` waits for them. With False they are
    built inline, inside the call that made them due. Opening works the same way: with background builds a
    large cache opens in seconds and answers with exact search until its approximate indexes are ready.

    `durable`, `background_index_builds`, `tombstone_rebuild_fraction` and `hnsw_hysteresis_fraction` are
    candidates for CacheConfig fields.
    """

    def __init__(
        self,
        config: CacheConfig,
        dim: int,
        *,
        clock: Callable[[], float] = time.time,
        tombstone_rebuild_fraction: float = TOMBSTONE_REBUILD_FRACTION,
        hnsw_hysteresis_fraction: float = HNSW_HYSTERESIS_FRACTION,
        durable: bool = True,
        background_index_builds: bool = True,
    ):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if not 0.0 <= hnsw_hysteresis_fraction < 1.0:
            raise ValueError(f"hnsw_hysteresis_fraction must be in [0, 1), got {hnsw_hysteresis_fraction}")
        self.config = config
        self.dim = dim
        self._clock = clock
        self._durable = durable
        self._index_options = namespace_index_options(  # refuses device 'cuda' here when faiss has no GPU
            config, tombstone_rebuild_fraction=tombstone_rebuild_fraction, hysteresis_fraction=hnsw_hysteresis_fraction
        )
        self._lock = threading.RLock()  # guards every field below
        self._compaction_lock = threading.Lock()  # one snapshot write at a time, outside self._lock
        self._entries: OrderedDict[int, CacheEntry] = OrderedDict()  # live entries, oldest first
        self._indexes: dict[str, NamespaceIndex] = {}
        self._closed = False
        self._admissions = self._evictions = self._queries = self._matches = self._compactions = 0
        self._admissions_pending = 0  # admissions since the last snapshot capture
        self._background_builds = background_index_builds
        self._builder: ThreadPoolExecutor | None = None  # started on the first background build
        self._building: set[str] = set()  # namespaces with a build in flight
        self._stop_builds = threading.Event()
        self._group_commit: GroupCommit[NewEntry, CacheEntry] = GroupCommit(self._commit)
        self._commit_lock = threading.Lock()  # one commit at a time, outside self._lock
        self._png_writers: ThreadPoolExecutor | None = None  # started on the first commit of several images

        self._layout = CacheLayout(config.directory)
        self._layout.open_or_create(dim)
        self._directory_lock = DirectoryLock(self._layout.lock)
        self._directory_lock.acquire()
        try:
            recovered = recover(self._layout, dim, config.capacity)
            self._next_id = recovered.next_id
            self._evicted_below = recovered.evicted_below
            self._pending_segments = recovered.pending_segments
            self._insert(recovered.entries, recovered.vectors, defer_builds=self._background_builds)
            if recovered.changed or recovered.pending_segments:
                self.compact()
            with self._lock:
                self._schedule_index_builds(set(self._indexes))
        except BaseException:
            self._stop_builds.set()
            if self._builder is not None:
                self._builder.shutdown(wait=True)
            self._directory_lock.release()
            raise
        logger.info(
            "cache: opened %s with %d entries in %d namespaces",
            self._layout.root,
            len(self._entries),
            len(self._indexes),
        )

    # --------------------------------------------------------------------------------------------- admission
    def add(
        self, png_bytes: bytes, embedding: np.ndarray, *, prompt: str, tenant: str, source_model: str, k: int
    ) -> CacheEntry:
        """Admit one final image. Durable when this returns; evicts the globally oldest entries beyond capacity.

        `embedding` is the (dim,) L2-normalised float32 vector the entry is retrieved by; `k` is 0 for a full
        generation and the skipped steps for a refined hit.
        """
        item = NewEntry(
            png_bytes=png_bytes, embedding=embedding, prompt=prompt, tenant=tenant, source_model=source_model, k=k
        )
        # Concurrent admitters (the CacheIndex replica's worker threads) share commits: one journal segment and
        # one fsync for all the admissions that arrived while the previous commit ran. A due snapshot is written
        # after, by the admitter that finds it due, while the others go on committing.
        entry = self._group_commit.submit(item)
        self._compact_if_due()
        return entry

    def add_many(self, items: Sequence[NewEntry]) -> list[CacheEntry]:
        """Admit several images with one commit (one journal segment). All are checked before any is written."""
        entries = self._commit(items)
        self._compact_if_due()
        return entries

    def _commit(self, items: Sequence[NewEntry]) -> list[CacheEntry]:
        """Write the items' PNGs and one journal segment, then make them visible (and evict past capacity).

        Commits run one at a time (`_commit_lock`: ids, the eviction watermark and segments follow commit order),
        but the writes hold no `_lock`, so queries and reads go on during the fsyncs; the PNGs of one commit are
        written in parallel (their fsyncs overlap), the segment after them."""
        checked = [self._check_new(item, position) for position, item in enumerate(items)]
        if not checked:
            return []
        with self._commit_lock:
            with self._lock:
                self._check_open()
                now = float(self._clock())
                first_id = self._next_id
                self._next_id += len(checked)  # burnt if the write below fails; ids only need to be increasing
                overflow = max(0, len(self._entries) + len(checked) - self.config.capacity)
                entries = [
                    CacheEntry(
                        id=first_id + i, tenant=tenant, prompt=prompt, created_at=now, source_model=source_model, k=k
                    )
                    for i, (_, _, prompt, tenant, source_model, k) in enumerate(checked)
                ]
                evicted_below = self._watermark_after(entries, overflow)
            vectors = np.concatenate([vector for _, vector, *_ in checked])
            paths = [self._layout.image_path(entry.id) for entry in entries]
            try:
                self._write_pngs(paths, [png for png, *_ in checked])
                rows = StoredRows(
                    entries=entries, vectors=vectors, next_id=entries[-1].id + 1, evicted_below=evicted_below
                )
                segment = self._layout.segment_path(first_id, entries[-1].id)
                write_rows(segment, rows, self.dim, durable=self._durable)  # the commit point
            except BaseException:
                for path in paths:
                    path.unlink(missing_ok=True)
                raise
            with self._lock:
                self._pending_segments += 1
                self._admissions += len(entries)
                self._admissions_pending += len(entries)
                # Evict before inserting so that no namespace ever holds more than `capacity` entries, not even
                # for a moment (that moment could cross hnsw_min_entries and start a needless HNSW build).
                evict_existing = min(overflow, len(self._entries))
                touched = self._evict_oldest(evict_existing)
                touched |= self._insert(entries, vectors, defer_builds=self._background_builds)
                touched |= self._evict_oldest(overflow - evict_existing)  # a batch larger than the capacity
                self._evicted_below = evicted_below
                self._schedule_index_builds(touched)
        return entries

    def _write_pngs(self, paths: list[Path], pngs: list[bytes]) -> None:
        """Each PNG written and fsynced (in parallel when there are several), then their directory once."""
        if len(paths) == 1:
            atomic_write_bytes(paths[0], pngs[0], durable=self._durable)
            return
        if self._png_writers is None:
            self._png_writers = ThreadPoolExecutor(max_workers=PNG_WRITE_THREADS, thread_name_prefix="modm-cache-png")
        futures = [
            self._png_writers.submit(atomic_write_bytes, path, png, durable=self._durable, sync_directory=False)
            for path, png in zip(paths, pngs)
        ]
        wait(futures)  # all of them, so that no write lands after the caller removed the commit's paths
        for future in futures:
            future.result()  # the first failure
        if self._durable:
            fsync_dir(self._layout.images)  # the renames, before the segment that commits them

    def _compaction_due(self) -> bool:
        """A snapshot is due once the journal holds `compact_every` admissions and, at scale, a fraction of the live
        entries (a snapshot rewrites every live entry: 1.2 s at 100k x 768, which every 256 admissions would cap
        admissions near 200/s; proportional, it costs O(1) per admission)."""
        threshold = max(self.config.compact_every, math.ceil(JOURNAL_COMPACTION_FRACTION * len(self._entries)))
        return self._admissions_pending >= threshold

    def _compact_if_due(self) -> None:
        with self._lock:
            due = not self._closed and self._compaction_due()
        if not due:
            return
        try:
            self._compact(only_if_due=True)
        except Exception:  # the admissions are committed; the journal simply stays longer
            logger.exception("cache: compaction of %s failed; will retry", self._layout.root)

    def _check_new(self, item: NewEntry, position: int) -> tuple:
        if not isinstance(item, NewEntry):
            raise ValueError(f"items[{position}] must be a NewEntry, got {type(item).__name__}")
        return (
            check_png(item.png_bytes),
            check_embedding(item.embedding, self.dim),
            check_text(item.prompt, "prompt"),
            check_text(item.tenant, "tenant"),
            check_text(item.source_model, "source_model"),
            check_k(item.k),
        )

    def _watermark_after(self, new_entries: list[CacheEntry], overflow: int) -> int:
        """Lowest live id once `overflow` of the oldest entries (existing first, then new) are evicted."""
        if overflow == 0:
            return self._evicted_below
        if overflow < len(self._entries):
            for position, entry_id in enumerate(self._entries):
                if position == overflow:
                    return entry_id
        return new_entries[overflow - len(self._entries)].id

    # ------------------------------------------------------------------------------------------------ access
    def get_png(self, entry_id: int) -> bytes:
        """The PNG bytes of a live entry. EntryNotFoundError if it was evicted since a query returned it: treat
        that as a miss."""
        with self._lock:
            self._check_open()
            if entry_id not in self._entries:
                raise EntryNotFoundError(entry_id)
            path = self._layout.image_path(entry_id)
            try:
                return path.read_bytes()
            except FileNotFoundError:
                raise CacheCorruptError(path, f"the image of live entry {entry_id} was removed") from None

    def get_embedding(self, entry_id: int) -> np.ndarray:
        with self._lock:
            entry = self.get_entry(entry_id)
            return self._indexes[entry.tenant].vector(entry_id).copy()

    def stats(self) -> CacheStats:
        with self._lock:
            namespaces = {
                name: NamespaceStats(
                    entries=len(index),
                    index_kind=index.kind,
                    tombstones=index.tombstones,
                    hnsw_builds=index.builds,
                )
                for name, index in self._indexes.items()
            }
            return CacheStats(
                directory=str(self._layout.root),
                dim=self.dim,
                capacity=self.config.capacity,
                entries=len(self._entries),
                next_id=self._next_id,
                namespaces=namespaces,
                pending_segments=self._pending_segments,
                index_builds_running=len(self._building),
                admissions=self._admissions,
                evictions=self._evictions,
                queries=self._queries,
                matches=self._matches,
                compactions=self._compactions,
            )

    # ----------------------------------------------------------------------------------------------- durable
    def compact(self) -> None:
        """Write a snapshot of every live entry and delete the journal segments and snapshots it supersedes.

        The snapshot is captured under the lock but written outside it, so queries and admissions continue.
        """
        with self._compaction_lock:
            self._compact_holding_compaction_lock(only_if_due=False)

    def _compact(self, *, only_if_due: bool) -> None:
        with self._compaction_lock:
            self._compact_holding_compaction_lock(only_if_due=only_if_due)

    def _compact_holding_compaction_lock(self, *, only_if_due: bool) -> None:
        with self._lock:
            if only_if_due and (self._closed or not self._compaction_due()):
                return  # closed, or another thread compacted while this one waited
            self._check_open()
            entries = list(self._entries.values())
            # References only: stored vectors are never modified, so they can be stacked outside the lock.
            vector_refs = [self._indexes[e.tenant].vector(e.id) for e in entries]
            next_id, evicted_below = self._next_id, self._evicted_below
            folded_segments, folded_admissions = self._pending_segments, self._admissions_pending
        vectors = np.stack(vector_refs) if entries else np.empty((0, self.dim), dtype=np.float32)
        rows = StoredRows(entries=entries, vectors=vectors, next_id=next_id, evicted_below=evicted_below)
        write_rows(self._layout.snapshot_path(next_id), rows, self.dim, durable=self._durable)
        # Segments below next_id are in the snapshot; later ones were committed after the capture.
        for (_, last_id), path in self._layout.list_segments():
            if last_id < next_id:
                path.unlink(missing_ok=True)
        for snapshot_next_id, path in self._layout.list_snapshots():
            if snapshot_next_id < next_id:
                path.unlink(missing_ok=True)
        with self._lock:
            self._pending_segments -= folded_segments
            self._admissions_pending -= folded_admissions
            self._compactions += 1

    def close(self) -> None:
        """Stop background index builds, fold the journal into a snapshot (so the next open is fast) and release
        the directory."""
        with self._commit_lock:  # a commit in flight finishes first; later ones find the cache closed
            with self._lock:
                if self._closed:
                    return
                compaction_due = self._pending_segments > 0
            self._stop_builds.set()
            if self._builder is not None:
                self._builder.shutdown(wait=True)  # a build stops at its next chunk
            if self._png_writers is not None:
                self._png_writers.shutdown(wait=True)
            with self._compaction_lock:  # also waits for a compaction another thread is running
                try:
                    if compaction_due:
                        self._compact_holding_compaction_lock(only_if_due=False)
                finally:
                    with self._lock:
                        self._closed = True
                        self._directory_lock.release()

    def wait_for_index_builds(self, timeout_s: float | None = None) -> bool:
        """Block until no background index build is running (including builds those builds made due).
        Returns False if `timeout_s` passed first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            with self._lock:
                if not self._building:
                    return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def __enter__(self) -> ImageCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------ memory
    def _insert(self, entries: Sequence[CacheEntry], vectors: np.ndarray, *, defer_builds: bool) -> set[str]:
        """Add entries to the FIFO order and their namespaces' indexes; returns the namespaces touched."""
        by_tenant: dict[str, list[int]] = {}
        for row, entry in enumerate(entries):
            self._entries[entry.id] = entry
            by_tenant.setdefault(entry.tenant, []).append(row)
        for tenant, rows in by_tenant.items():
            index = self._indexes.get(tenant)
            if index is None:
                index = self._indexes[tenant] = NamespaceIndex(
                    self.dim, defer_builds=defer_builds, **self._index_options
                )
            ids = np.array([entries[r].id for r in rows], dtype=np.int64)
            index.add(ids, np.ascontiguousarray(vectors[rows], dtype=np.float32))
        return set(by_tenant)

    def _evict_oldest(self, count: int) -> set[str]:
        """Evict the `count` oldest entries (their admission is already committed); returns the namespaces."""
        if count <= 0:
            return set()
        evicted = [self._entries.popitem(last=False)[1] for _ in range(count)]
        by_tenant: dict[str, list[int]] = {}
        for entry in evicted:
            by_tenant.setdefault(entry.tenant, []).append(entry.id)
        for tenant, ids in by_tenant.items():
            index = self._indexes[tenant]
            index.remove(ids)
            if not len(index):
                del self._indexes[tenant]  # tenants come and go; keep no empty indexes around
        for entry in evicted:
            try:
                self._layout.image_path(entry.id).unlink(missing_ok=True)
            except OSError:  # harmless: the next open removes orphan images
                logger.warning("cache: could not delete evicted image %d", entry.id, exc_info=True)
        self._evictions += count
        return set(by_tenant)

    # ------------------------------------------------------------------------------------- background builds
    def _schedule_index_builds(self, tenants: set[str]) -> None:
        """Start a background index build for each of `tenants` that needs one and has none running."""
        if not self._background_builds or self._stop_builds.is_set():
            return
        for tenant in sorted(tenants - self._building):
            index = self._indexes.get(tenant)
            if index is None or not index.build_due:
                continue
            if self._builder is None:
                self._builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modm-cache-index")
            try:
                self._builder.submit(self._run_index_build, tenant, index, index.capture_build())
            except RuntimeError:  # close() shut the executor down between the check above and here
                return
            self._building.add(tenant)

    def _run_index_build(self, tenant: str, index: NamespaceIndex, build: IndexBuild) -> None:
        started = time.perf_counter()
        try:
            large_index = build.run(self._stop_builds.is_set)  # no lock held: queries and admissions go on
        except Exception:
            logger.exception("cache: index build for namespace %r failed; it keeps its current index", tenant)
            large_index = None
        with self._lock:
            self._building.discard(tenant)
            if large_index is None or self._closed or self._indexes.get(tenant) is not index:
                return  # stopped, failed, or the namespace emptied meanwhile
            try:
                installed = index.install(build, large_index)
            except Exception:
                logger.exception("cache: installing the approximate index of namespace %r failed", tenant)
                return
            logger.info(
                "cache: approximate index of %d vectors for namespace %r built in %.1f s (%s)",
                len(build.ids),
                tenant,
                time.perf_counter() - started,
                "installed" if installed else "discarded",
            )
            self._schedule_index_builds({tenant})  # admissions during the build may have made another due

    def _check_open(self) -> None:
        if self._closed:
            raise CacheClosedError(f"the cache at {self._layout.root} is closed")
