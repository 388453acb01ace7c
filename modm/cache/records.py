"""What the cache stores and returns, and the checks applied to everything a caller hands in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from modm.cache.constants import EMBEDDING_NORM_TOLERANCE
from modm.images import PNG_SIGNATURE

__all__ = [
    "PNG_SIGNATURE",
    "CacheEntry",
    "Lookup",
    "Match",
    "NewEntry",
    "check_embedding",
    "check_embeddings",
    "check_k",
    "check_namespaces",
    "check_png",
    "check_text",
]


@dataclass(frozen=True)
class CacheEntry:
    """Metadata of one cached image. The image itself is read with `ImageCache.get_png(entry.id)`."""

    id: int  # monotonic admission sequence number; also the PNG's file name
    tenant: str  # namespace the entry belongs to
    prompt: str  # the prompt that produced the image
    created_at: float  # unix seconds (from the cache's clock) at admission
    source_model: str  # the model that produced the final image
    k: int  # steps skipped when it was produced: 0 for a full generation, k for a refined hit


@dataclass(frozen=True)
class Match:
    """The best cached entry for a query, by inner product of L2-normalised embeddings (cosine)."""

    entry_id: int
    score: float
    entry: CacheEntry


@dataclass(frozen=True)
class Lookup:
    """A query's best match (None: nothing in scope) and, when the match scores at least the score the caller
    asked for, the entry's image with it (None below that score, or when the entry was evicted since the query)."""

    match: Match | None
    png: bytes | None = None


@dataclass(frozen=True)
class NewEntry:
    """One admission for `ImageCache.add_many`; the fields mean what `ImageCache.add`'s arguments mean."""

    png_bytes: bytes
    embedding: np.ndarray
    prompt: str
    tenant: str
    source_model: str
    k: int


def check_text(value: object, what: str) -> str:
    """A non-empty string that encodes to UTF-8 (lone surrogates do not, and parquet stores UTF-8)."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}: {value!r:.80}")
    if not value.strip():
        raise ValueError(f"{what} must not be empty or blank, got {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"{what} is not valid Unicode text ({err.reason} at index {err.start}): {value!r:.80}"
        ) from None
    return value


def check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be an integer >= 0 (0 for a full generation), got {k!r}")
    return int(k)


def check_png(png_bytes: object) -> bytes:
    if not isinstance(png_bytes, (bytes, bytearray, memoryview)):
        raise ValueError(f"png_bytes must be bytes, got {type(png_bytes).__name__}")
    data = bytes(png_bytes)
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"png_bytes is not a PNG image (starts with {data[:8]!r}, {len(data)} bytes)")
    return data


def check_embeddings(embeddings: object, dim: int, what: str = "embeddings") -> np.ndarray:
    """A C-contiguous float32 (n, dim) array of finite, unit-norm rows (faiss needs exactly this layout)."""
    try:
        array = np.asarray(embeddings)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} is not an array: {err}") from None
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"{what} must have shape (n, {dim}), got {array.shape}")
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{what} must be real numbers, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        raise ValueError(f"{what} row {int(np.argmin(finite))} contains NaN or infinity")
    norms = np.linalg.norm(array, axis=1)
    off = np.abs(norms - 1.0) > EMBEDDING_NORM_TOLERANCE
    if off.any():
        row = int(np.argmax(off))
        raise ValueError(f"{what} row {row} has L2 norm {norms[row]:.4f}; embeddings must be L2-normalised")
    return array


def check_embedding(embedding: object, dim: int, what: str = "embedding") -> np.ndarray:
    """One embedding of shape (dim,) or (1, dim), returned as a (1, dim) float32 array."""
    try:
        array = np.asarray(embedding)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} is not an array: {err}") from None
    if array.shape not in ((dim,), (1, dim)):
        raise ValueError(f"{what} must have shape ({dim},), got {array.shape}")
    return check_embeddings(array.reshape(1, dim), dim, what)


def check_namespaces(namespaces: object) -> tuple[str, ...]:
    """The tenant namespaces one query may read. A bare string is refused: it would iterate per character."""
    if isinstance(namespaces, str) or not isinstance(namespaces, Sequence | set | frozenset):
        raise ValueError(f"namespaces must be a sequence of tenant names, got {namespaces!r:.80}")
    if not namespaces:
        raise ValueError("namespaces must name at least one tenant")
    return tuple(dict.fromkeys(check_text(ns, "namespace") for ns in namespaces))
