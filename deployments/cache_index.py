"""CacheIndex: the owner of the persistent image cache (one replica: it holds the directory lock)."""

from __future__ import annotations

from modm.cache import ImageCache
from modm.config import CacheConfig
from modm.serving.services import ImageCacheService


class CacheIndexServer(ImageCacheService):
    def __init__(self, config: dict, dim: int):
        super().__init__(ImageCache(CacheConfig.model_validate(config), dim))

    def check_health(self) -> None:
        self.cache.stats()  # raises once the cache is closed or broken
