"""The cache directory on disk: file names, the manifest, the single-writer lock, and atomic file writes.

    <directory>/
      modm-cache.json                       manifest: format name, format version, embedding dim
      lock                                  flock'd while an ImageCache has the directory open
      images/000000000042.png               one PNG per entry, named by entry id only
      journal/000000000042-000000000042.parquet   one segment per admission batch (the commit point)
      snapshots/snapshot-000000000256.parquet     every live entry with id < 256 (segments below are folded in)

File names are built from integers only, so no prompt or tenant can steer a write outside the directory.
Every file is written as `<name>.tmp`, fsynced, renamed over `<name>`, and its directory fsynced, so a crash
leaves either the old state or the new one plus a stray `.tmp` that the next open deletes.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from modm.cache.constants import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ID_DIGITS,
    IMAGES_DIR,
    JOURNAL_DIR,
    LOCK_FILE,
    MANIFEST_FILE,
    SNAPSHOTS_DIR,
    TMP_SUFFIX,
)
from modm.cache.errors import CacheCorruptError, CacheDimensionError, CacheLockedError

__all__ = ["CacheLayout", "DirectoryLock", "atomic_write", "atomic_write_bytes", "fsync_dir"]

_IMAGE_NAME = re.compile(r"^(\d+)\.png$")
_SEGMENT_NAME = re.compile(r"^(\d+)-(\d+)\.parquet$")
_SNAPSHOT_NAME = re.compile(r"^snapshot-(\d+)\.parquet$")


class CacheLayout:
    """Paths inside one cache directory."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        self.manifest = self.root / MANIFEST_FILE
        self.lock = self.root / LOCK_FILE
        self.images = self.root / IMAGES_DIR
        self.journal = self.root / JOURNAL_DIR
        self.snapshots = self.root / SNAPSHOTS_DIR

    @property
    def subdirectories(self) -> tuple[Path, ...]:
        return self.images, self.journal, self.snapshots

    def image_path(self, entry_id: int) -> Path:
        return self.images / f"{int(entry_id):0{ID_DIGITS}d}.png"

    def segment_path(self, first_id: int, last_id: int) -> Path:
        return self.journal / f"{int(first_id):0{ID_DIGITS}d}-{int(last_id):0{ID_DIGITS}d}.parquet"

    def snapshot_path(self, next_id: int) -> Path:
        return self.snapshots / f"snapshot-{int(next_id):0{ID_DIGITS}d}.parquet"

    # Listing: each returns (parsed key, path) for our own names and ignores anything else.
    def list_images(self) -> list[tuple[int, Path]]:
        return _matching(self.images, _IMAGE_NAME, lambda m: int(m[1]))

    def list_segments(self) -> list[tuple[tuple[int, int], Path]]:
        return _matching(self.journal, _SEGMENT_NAME, lambda m: (int(m[1]), int(m[2])))

    def list_snapshots(self) -> list[tuple[int, Path]]:
        return _matching(self.snapshots, _SNAPSHOT_NAME, lambda m: int(m[1]))

    def list_tmp_files(self) -> list[Path]:
        found = []
        for directory in (self.root, *self.subdirectories):
            if directory.is_dir():
                found.extend(p for p in directory.iterdir() if p.name.endswith(TMP_SUFFIX) and p.is_file())
        return found

    # Manifest.
    def open_or_create(self, dim: int) -> None:
        """Create an empty cache here, or check that the directory is a cache of this format and `dim`.

        Raises CacheCorruptError (before writing anything) for a foreign, corrupt or mismatched directory.
        """
        if self.root.exists() and not self.root.is_dir():
            raise CacheCorruptError(self.root, "the cache directory is not a directory")
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.manifest.exists():
            ours = {MANIFEST_FILE + TMP_SUFFIX}  # what a crash during creation can leave behind
            foreign = sorted(p.name for p in self.root.iterdir() if p.name not in ours)
            if foreign:
                shown = ", ".join(repr(n) for n in foreign[:5]) + (" ..." if len(foreign) > 5 else "")
                raise CacheCorruptError(
                    self.root,
                    f"not a modm image cache (no {MANIFEST_FILE}) and not empty: "
                    f"it holds {shown}; refusing to write into it",
                )
            manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "dim": int(dim)}
            atomic_write_bytes(self.manifest, json.dumps(manifest, indent=2).encode())
        self._check_manifest(dim)
        for directory in self.subdirectories:
            directory.mkdir(exist_ok=True)

    def check_existing(self, dim: int) -> None:
        """Check, changing nothing, that a cache of this format and `dim` is here (how a reader opens it).

        FileNotFoundError while no writer has created it yet; CacheCorruptError for a foreign, corrupt or
        mismatched directory (CacheDimensionError for another embedding size).
        """
        if self.root.exists() and not self.root.is_dir():
            raise CacheCorruptError(self.root, "the cache directory is not a directory")
        if not self.manifest.exists():
            raise FileNotFoundError(
                f"{self.root}: no modm image cache here (no {MANIFEST_FILE}); a reader follows a directory that "
                "its writer (the CacheIndex) has created, on storage both can see"
            )
        self._check_manifest(dim)

    def _check_manifest(self, dim: int) -> None:
        try:
            manifest = json.loads(self.manifest.read_bytes())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CacheCorruptError(self.manifest, f"unreadable manifest: {err}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
            raise CacheCorruptError(self.manifest, f"not a {FORMAT_NAME} manifest: {str(manifest)[:120]}")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise CacheCorruptError(
                self.manifest, f"format version {version!r}; this modm reads version {FORMAT_VERSION} only"
            )
        stored_dim = manifest.get("dim")
        if stored_dim != dim:
            raise CacheDimensionError(
                self.manifest,
                f"holds {stored_dim}-dimensional embeddings but the embedder produces {dim}; "
                "use the embedder this cache was built with, or another cache.directory",
            )


class DirectoryLock:
    """An exclusive flock on `<directory>/lock`: one ImageCache per directory, across processes.

    The kernel drops the lock when the process dies, so a crash never leaves the directory locked.
    """

    def __init__(self, path: Path):
        self._path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise CacheLockedError(
                    f"{self._path.parent} is already open by another ImageCache "
                    "(another replica or process); give each one its own directory"
                ) from None
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def fsync_dir(directory: Path) -> None:
    """Make renames inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: Path, write: Callable[[BinaryIO], None], *, durable: bool = True, sync_directory: bool = True
) -> None:
    """Write `path` through `write(file)` so that it appears complete or not at all.

    The tmp-then-rename alone survives the death of the process; `durable` adds the fsyncs that make it survive
    a power loss or kernel crash too (several milliseconds per write on a busy disk). A caller writing several
    files into one directory may pass `sync_directory=False` and fsync the directory once after them all.
    """
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable and sync_directory:
        fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True, sync_directory: bool = True) -> None:
    atomic_write(path, lambda f: f.write(data), durable=durable, sync_directory=sync_directory)


def _matching(directory: Path, pattern: re.Pattern, key: Callable) -> list:
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = pattern.match(path.name)
        if match:
            found.append((key(match), path))
    return sorted(found, key=lambda item: item[0])
