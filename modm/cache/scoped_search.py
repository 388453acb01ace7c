"""Top-1 search where each query row searches only its own tenants' namespaces: the one search of the cache's writer
(ImageCache) and of its read replicas (CacheFollower)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from modm.cache.index import NamespaceIndex
from modm.cache.records import CacheEntry, Match, check_embeddings, check_namespaces

__all__ = ["check_scoped_queries", "scoped_matches", "search_scoped"]


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
