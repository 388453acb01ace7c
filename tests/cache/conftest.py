"""Fixtures of the cache tests: a fresh directory per test and caches that are closed after it."""

from __future__ import annotations

import pytest
from cache_testkit import DIM, make_config

from modm.cache import ImageCache


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"


@pytest.fixture
def open_cache(cache_dir):
    """open_cache(**config_overrides) -> an ImageCache on `cache_dir`, closed when the test ends.

    Without fsync by default: the crash tests kill processes, which fsync does not guard against anyway.
    HNSW graphs are built inline by default so that index kinds are deterministic right after each call.
    """
    opened = []

    def _open(
        directory=None, dim: int = DIM, durable: bool = False, background_index_builds: bool = False, **overrides
    ) -> ImageCache:
        cache = ImageCache(
            make_config(directory or cache_dir, **overrides),
            dim,
            durable=durable,
            background_index_builds=background_index_builds,
        )
        opened.append(cache)
        return cache

    yield _open
    for cache in opened:
        cache.close()
