"""Deterministic inputs for the cache tests (also imported by the crash child process)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from modm.config import CacheConfig

DIM = 16


def unit_vector(seed: int, dim: int = DIM) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


def near_duplicate(vector: np.ndarray, cosine: float, seed: int) -> np.ndarray:
    """A unit vector whose cosine with `vector` is exactly `cosine`."""
    noise = np.random.default_rng(seed).standard_normal(vector.shape[0]).astype(np.float32)
    noise -= noise.dot(vector) * vector
    noise /= np.linalg.norm(noise)
    out = cosine * vector + np.sqrt(1.0 - cosine**2) * noise
    return (out / np.linalg.norm(out)).astype(np.float32)


def tiny_png(seed: int) -> bytes:
    """A 4x4 RGB PNG whose pixels depend on `seed`, so a stored image can be traced to its admission."""
    pixels = np.random.default_rng(10_000 + seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def make_config(directory, **overrides) -> CacheConfig:
    settings = dict(directory=str(directory), capacity=100, hnsw_min_entries=10_000, compact_every=1_000)
    settings.update(overrides)
    return CacheConfig(**settings)


def add_seeded(cache, seed: int, tenant: str = "alice", k: int = 0):
    """Admit the entry defined by `seed` (image, embedding and prompt all derive from it)."""
    return cache.add(
        tiny_png(seed),
        unit_vector(seed, cache.dim),
        prompt=f"prompt {seed}",
        tenant=tenant,
        source_model="tiny-large",
        k=k,
    )


def add_seeded_batch(cache, seeds, tenant_of=lambda seed: "alice"):
    """Admit the entries defined by `seeds` in one commit (faster than one add per seed)."""
    from modm.cache import NewEntry

    return cache.add_many(
        [
            NewEntry(
                png_bytes=tiny_png(s),
                embedding=unit_vector(s, cache.dim),
                prompt=f"prompt {s}",
                tenant=tenant_of(s),
                source_model="tiny-large",
                k=0,
            )
            for s in seeds
        ]
    )
