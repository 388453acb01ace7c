"""Top-1 search where each query row searches only its own tenants' namespaces: the one search of the cache's writer
(ImageCache) and of its read replicas (CacheFollower), and the read side they share (ScopedEntryView)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np

from modm.cache.errors import EntryNotFoundError
from modm.cache.index import NamespaceIndex
from modm.cache.records import CacheEntry, Match, check_embedding, check_embeddings, check_namespaces

__all__ = ["ScopedEntryView", "check_scoped_queries", "scoped_matches", "search_scoped"]


def check_scoped_queries(
    embeddings: np.ndarray, namespaces: Sequence[Sequence[str]], dim: int
) -> tuple[np.ndarray, list]:
    """(queries as (n, dim) float32, one checked scope per row), or a ValueError naming what is wrong."""
    queries = check_embeddings(embeddings, dim)
    if isinstance(namespaces, str) or len(namespaces) != len(queries):
        raise ValueError(
            f"namespaces must hold one sequence of tenant names per query row ({len(queries)}), got {namespaces!r:.80}"
        )
    return queries, [check_namespaces(scope) for scope in namespaces]


def search_scoped(
    indexes: Mapping[str, NamespaceIndex], queries: np.ndarray, scopes: Sequence[Sequence[str]]
) -> tuple[np.ndarray, np.ndarray]:
    """The best (score, entry id) of each row over the namespaces of its scope: one search per namespace for all the
    rows that include it. Rows with nothing to search get (-inf, -1)."""
    best_scores = np.full(len(queries), -np.inf, dtype=np.float32)
    best_ids = np.full(len(queries), -1, dtype=np.int64)
    for namespace in dict.fromkeys(ns for scope in scopes for ns in scope):
        index = indexes.get(namespace)
        if index is None:
            continue
        rows = np.array([i for i, scope in enumerate(scopes) if namespace in scope])
        scores, ids = index.search(queries[rows])
        better = (ids >= 0) & (scores > best_scores[rows])
        best_scores[rows[better]] = scores[better]
        best_ids[rows[better]] = ids[better]
    return best_scores, best_ids


def scoped_matches(
    indexes: Mapping[str, NamespaceIndex],
    entries: Mapping[int, CacheEntry],
    queries: np.ndarray,
    scopes: Sequence[Sequence[str]],
) -> list[Match | None]:
    """`search_scoped` as one Match (or None) per row, its entry looked up in `entries`."""
    best_scores, best_ids = search_scoped(indexes, queries, scopes)
    return [
        Match(entry_id=int(i), score=float(s), entry=entries[int(i)]) if i >= 0 else None
        for s, i in zip(best_scores, best_ids)
    ]


class ScopedEntryView:
    """The queries and entry lookups of a cache view: entries by id (oldest first) and one index per tenant
    namespace, guarded by one lock. ImageCache (the writer) and CacheFollower (a reader) keep that state their own
    way and answer reads the same way through this class; each says in `_check_open` when it is closed."""

    dim: int
    _lock: threading.RLock
    _entries: OrderedDict[int, CacheEntry]
    _indexes: dict[str, NamespaceIndex]
    _queries: int
    _matches: int

    def _check_open(self) -> None:
        raise NotImplementedError

    def query(self, embedding: np.ndarray, namespaces: Sequence[str]) -> Match | None:
        """Top-1 entry by inner product among entries whose tenant is in `namespaces`; None if there are none."""
        return self.query_batch(check_embedding(embedding, self.dim), [namespaces])[0]

    def query_batch(self, embeddings: np.ndarray, namespaces: Sequence[Sequence[str]]) -> list[Match | None]:
        """Top-1 for each row of (n, dim) `embeddings`, row i searching only the tenants in `namespaces[i]`."""
        queries, scopes = check_scoped_queries(embeddings, namespaces, self.dim)
        with self._lock:
            self._check_open()
            matches = scoped_matches(self._indexes, self._entries, queries, scopes)
            self._queries += len(matches)
            self._matches += sum(m is not None for m in matches)
        return matches

    def get_entry(self, entry_id: int) -> CacheEntry:
        with self._lock:
            if entry_id not in self._entries:
                raise EntryNotFoundError(entry_id)
            return self._entries[entry_id]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, entry_id: object) -> bool:
        with self._lock:
            return entry_id in self._entries

    def entries(self) -> list[CacheEntry]:
        """The entries, oldest first (the order FIFO evicts them in)."""
        with self._lock:
            return list(self._entries.values())

    def namespaces(self) -> list[str]:
        with self._lock:
            return list(self._indexes)
