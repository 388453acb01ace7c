"""LatentCache: NIRVANA's cache of intermediate latents (the `nirvana` baseline mode), one replica
(modm.serving.services.LatentCacheService)."""

from __future__ import annotations

from modm.config import CacheConfig
from modm.serving.services import LatentCacheService


class LatentCacheServer(LatentCacheService):
    def __init__(self, config: dict, dim: int, total_steps: int):
        super().__init__(CacheConfig.model_validate(config), dim, total_steps)
