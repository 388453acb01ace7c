"""Router: the request pipeline (modm.serving.RequestPipeline) as a deployment of several replicas, called by the
Ingress (deployments/http_ingress.py), never by HTTP directly.

It loads no model and decides nothing itself: deployment handles become the pipeline's backends
(deployments/handles.py), and each method is one endpoint's work on already parsed requests. A refusal comes back as
a value, the `RequestRefused` itself, for the Ingress to raise and render: raised here, Serve would log every 429 as
a replica failure. Requests hold no state between calls but the pipeline's counts, so the Ingress may re-drive one
whose Router replica died on another replica.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable
from typing import TypeVar

from ray import serve

from deployments.cache_index import cache_backend
from deployments.handles import HandleProxy
from deployments.metrics import RouterMetrics
from modm.config import SystemConfig
from modm.roles import ModelRole, small_tier_name
from modm.serving import Backends, RequestPipeline
from modm.serving.errors import RequestRefused
from modm.serving.images_api import EditBody, GenerationBody, ModelCard, ModelList
from modm.serving.request import DeliveredImage, ServedImages
from modm.serving.response_store import StoredImage
from modm.serving.tiers import TieredPool

T = TypeVar("T")
# What an image request comes back as: its metadata (the images themselves not repeated) and the delivered images.
ImagesAnswer = tuple[ServedImages, list[DeliveredImage]]


async def _refusal_as_value(work: Awaitable[T]) -> T | RequestRefused:
    try:
        return await work
    except RequestRefused as err:
        return err


class Router:
    async def __init__(
        self,
        system: dict,
        large,
        small=None,
        embedder=None,
        cache=None,
        monitor=None,
        store=None,
        load_board=None,
        signing_key: str | None = None,
        small_tiers: tuple = (),
    ):
        """`small_tiers`: with models.small_tiers, the handles of the tiers after `small` (small2, ...); hits then go
        to the tier the monitor chose (modm.serving.tiers)."""
        config = SystemConfig.model_validate(system)
        models = {ModelRole.LARGE: HandleProxy(large)}
        if small is not None and small_tiers:
            handles = [small, *small_tiers]
            models[ModelRole.SMALL] = TieredPool({small_tier_name(i): HandleProxy(h) for i, h in enumerate(handles)})
        elif small is not None:
            models[ModelRole.SMALL] = HandleProxy(small)
        services = {"embedder": embedder, "monitor": monitor, "store": store, "load_board": load_board}
        backends = Backends(
            models=models,
            cache=None if cache is None else cache_backend(cache),  # a handle, or CacheHandles (readers + writer)
            **{name: HandleProxy(handle) for name, handle in services.items() if handle is not None},
        )
        self.pipeline = RequestPipeline(
            config,
            backends,
            metrics=RouterMetrics(config.mode.value),
            signing_key=None if signing_key is None else bytes.fromhex(signing_key),
            router_id=serve.get_replica_context().replica_id.unique_id,
        )
        await self.pipeline.start()  # runs cache.warm: the app is not RUNNING until the cache is warm

    async def generate(
        self, body: GenerationBody, tenant_header: str | None, authorization: str | None
    ) -> ImagesAnswer | RequestRefused:
        async def work() -> ImagesAnswer:
            tenant = self.pipeline.tenant(tenant_header, authorization)
            served = await self.pipeline.generate(body.image_request(tenant))
            return await self._delivered(served, body, tenant)

        return await _refusal_as_value(work())

    async def edit(
        self, body: EditBody, files: dict[str, list[bytes]], tenant_header: str | None, authorization: str | None
    ) -> ImagesAnswer | RequestRefused:
        async def work() -> ImagesAnswer:
            tenant = self.pipeline.tenant(tenant_header, authorization)
            served = await self.pipeline.edit(body.edit_request(tenant, files))
            return await self._delivered(served, body, tenant)

        return await _refusal_as_value(work())

    async def _delivered(self, served: ServedImages, body: GenerationBody | EditBody, tenant: str) -> ImagesAnswer:
        delivered = await self.pipeline.deliver(served.images, body.delivery(), tenant)
        return dataclasses.replace(served, images=[]), delivered

    async def stored_image(
        self, image_id: str, expires: int, signature: str, tenant_header: str | None, authorization: str | None
    ) -> StoredImage | RequestRefused:
        return await _refusal_as_value(
            self.pipeline.stored_image(image_id, expires, signature, tenant_header, authorization)
        )

    async def models(self, authorization: str | None) -> ModelList | RequestRefused:
        async def work() -> ModelList:
            self.pipeline.authenticate(authorization)
            return self.pipeline.models()

        return await _refusal_as_value(work())

    async def model(self, model_id: str, authorization: str | None) -> ModelCard | RequestRefused:
        async def work() -> ModelCard:
            self.pipeline.authenticate(authorization)
            return self.pipeline.model(model_id)

        return await _refusal_as_value(work())

    async def healthz(self) -> dict:
        return {"status": "ok", "mode": self.pipeline.mode.value}

    async def stats(self, authorization: str | None) -> dict | RequestRefused:
        async def work() -> dict:
            self.pipeline.authenticate(authorization)
            return await self.pipeline.stats()

        return await _refusal_as_value(work())

    async def cached_image(
        self, entry_id: int, tenant_header: str | None, authorization: str | None
    ) -> bytes | RequestRefused:
        async def work() -> bytes:
            return await self.pipeline.cached_image(entry_id, self.pipeline.tenant(tenant_header, authorization))

        return await _refusal_as_value(work())

    async def drain_admissions(self) -> int:
        """Wait for background admissions (tests and graceful shutdown); returns how many were pending."""
        return await self.pipeline.drain_admissions()
