"""Every backend in this process: one model service per role, the embedder, the mode's cache and the response
store. What `modm demo`
serves the pipeline with; the Serve app runs the same services as deployments."""

from __future__ import annotations

from modm.cache import ImageCache
from modm.config import SystemConfig, SystemMode
from modm.embedding import build_embedder
from modm.policy import NIRVANA_K_CHOICES
from modm.roles import ModelRole
from modm.serving.backends import Backends
from modm.serving.response_store import ResponseStore
from modm.serving.services import EmbedderService, ImageCacheService, LatentCacheService

__all__ = ["LocalBackends"]


class LocalBackends:
    """`backends` for `config`, loaded now; a context manager that closes the image cache (its directory lock).
    `roles`: the model pools to load (default: those the mode serves)."""

    def __init__(self, config: SystemConfig, *, roles: tuple[ModelRole, ...] | None = None):
        from modm.generation import ModelService, generator_from_spec

        if roles is None:
            roles = (ModelRole.LARGE, ModelRole.SMALL) if config.mode is SystemMode.MODM else (ModelRole.LARGE,)
        snapshots = NIRVANA_K_CHOICES if config.mode is SystemMode.NIRVANA else ()
        models = {}
        for role in roles:
            spec = getattr(config.models, role.value)
            models[role] = ModelService(generator_from_spec(spec, role.value), spec, snapshot_steps=snapshots)
        self.image_cache: ImageCache | None = None
        serving = config.serving
        self.backends = Backends(
            models=models, store=ResponseStore(serving.image_url_ttl_s, serving.response_store_max_bytes)
        )
        if config.mode is SystemMode.VANILLA:
            return
        embedder = build_embedder(config.embedder)
        self.backends.embedder = EmbedderService(embedder, max_batch=config.embedder.batch_size)
        if config.mode is SystemMode.MODM:
            self.image_cache = ImageCache(config.cache, embedder.dim)
            self.backends.cache = ImageCacheService(self.image_cache)
        else:
            self.backends.cache = LatentCacheService(config.cache, embedder.dim, config.policy.total_steps)

    def close(self) -> None:
        if self.image_cache is not None:
            self.image_cache.close()

    def __enter__(self) -> LocalBackends:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
