"""The image cache's deployments: CacheIndex, its owner (one replica: it holds the directory lock and admits), and
CacheReader, `cache.read_replicas` replicas that serve lookups by following the owner's journal. The Router gets
them as `CacheHandles` and calls them as one backend (`cache_backend`)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from ray.serve.handle import DeploymentHandle

from deployments.handles import HandleProxy
from modm.cache import ImageCache
from modm.cache.follower import CacheFollower
from modm.config import CacheConfig
from modm.serving.read_write_cache import ReadWriteCache
from modm.serving.services import CacheReaderService, ImageCacheService

logger = logging.getLogger("ray.serve")

# A reader replica may start before the CacheIndex has created the directory; it waits this long for it.
READER_WAIT_FOR_WRITER_S = float(os.environ.get("MODM_CACHE_READER_WAIT_FOR_WRITER_S", 120.0))
# A reader whose view is older than this fails its health check, so Serve replaces it with one that loads afresh.
READER_MAX_BEHIND_S = float(os.environ.get("MODM_CACHE_READER_MAX_BEHIND_S", 120.0))


class CacheIndexServer(ImageCacheService):
    def __init__(self, config: dict, dim: int):
        super().__init__(ImageCache(CacheConfig.model_validate(config), dim))

    def check_health(self) -> None:
        self.cache.stats()  # raises once the cache is closed or broken


class CacheReaderServer(CacheReaderService):
    def __init__(self, config: dict, dim: int):
        cache_config = CacheConfig.model_validate(config)
        deadline = time.monotonic() + READER_WAIT_FOR_WRITER_S
        while True:
            try:
                follower = CacheFollower(cache_config, dim)
                break
            except FileNotFoundError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.25)
        follower.follow()
        super().__init__(follower)

    def check_health(self) -> None:
        behind_s = self.cache.stats().behind_s  # raises once the follower is closed
        if behind_s > max(READER_MAX_BEHIND_S, 10 * self.cache.config.follow_interval_s):
            raise RuntimeError(f"this reader's view of the cache is {behind_s:.0f} s old: its refreshes fail")

    def __del__(self) -> None:  # Serve calls it when the replica stops
        cache = getattr(self, "cache", None)
        if cache is not None:
            cache.close()


@dataclass(frozen=True)
class CacheHandles:
    """The image cache's deployments as one Router argument: the writer, and the readers that serve its lookups."""

    writer: DeploymentHandle
    readers: DeploymentHandle


def cache_backend(cache: DeploymentHandle | CacheHandles) -> HandleProxy | ReadWriteCache:
    """The pipeline's cache backend: the one deployment's handle, or the readers and the writer as one backend."""
    if isinstance(cache, CacheHandles):
        return ReadWriteCache(reader=HandleProxy(cache.readers), writer=HandleProxy(cache.writer))
    return HandleProxy(cache)
