"""Exceptions raised by the image cache. Each message names the file or value at fault."""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "CacheClosedError",
    "CacheCorruptError",
    "CacheDimensionError",
    "CacheError",
    "CacheLockedError",
    "EntryNotFoundError",
]


class CacheError(Exception):
    """Base class of every image-cache error."""


class CacheCorruptError(CacheError):
    """The cache directory cannot be used as it is: foreign, corrupt, or written by another format version.

    Raised while opening, before anything in the directory is changed (and by get_png if a live entry's file
    was removed by hand).
    """

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class CacheDimensionError(CacheCorruptError):
    """The directory holds embeddings of another dimension than the configured embedder produces."""


class CacheLockedError(CacheError):
    """Another ImageCache (in this or another process) has the directory open."""


class CacheClosedError(CacheError):
    """The cache was used after close()."""


class EntryNotFoundError(CacheError, KeyError):
    """No live entry has this id: it was never added, or it has been evicted since it was retrieved."""

    def __init__(self, entry_id: int):
        self.entry_id = entry_id
        super().__init__(entry_id)

    def __str__(self) -> str:
        return f"no cache entry with id {self.entry_id} (never added, or evicted)"
