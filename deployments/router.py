"""Router: the HTTP ingress, an adapter between FastAPI and the Ray-free request pipeline (modm.serving).

It loads no model and decides nothing: HTTP bodies and headers become pipeline calls, deployment handles become the
pipeline's backends (deployments/handles.py), and the pipeline's answers and refusals become JSON responses.
"""

# No `from __future__ import annotations`: Serve's class-based view hands FastAPI the endpoints' annotations as they
# are, and FastAPI must see the `Request` class itself, not the string "Request".
import base64

from fastapi import Header, Request, Response
from ray import serve

from deployments.api import GenerationBody, GenerationResponse, ImageData
from deployments.handles import HandleProxy
from deployments.ingress import api, body_schema, read_json_body
from deployments.metrics import RouterMetrics
from modm.config import SystemConfig
from modm.roles import ModelRole
from modm.serving import Backends, ImageRequest, RequestPipeline


# Decorated here, not in the builder: serve.ingress rewrites `api`'s routes, and every replica re-imports this module
# (the app object is not pickled by value), so the rewrite must happen at import time.
@serve.ingress(api)
class Router:
    async def __init__(self, system: dict, large, small=None, embedder=None, cache=None, monitor=None):
        config = SystemConfig.model_validate(system)
        models = {ModelRole.LARGE: HandleProxy(large)}
        if small is not None:
            models[ModelRole.SMALL] = HandleProxy(small)
        backends = Backends(
            models=models,
            **{
                name: HandleProxy(handle)
                for name, handle in (("embedder", embedder), ("cache", cache), ("monitor", monitor))
                if handle is not None
            },
        )
        self.max_body_bytes = config.limits.max_body_bytes
        self.pipeline = RequestPipeline(config, backends, metrics=RouterMetrics(config.mode.value))
        await self.pipeline.start()  # runs cache.warm: the app is not RUNNING until the cache is warm

    @api.post("/v1/images/generations", response_model=GenerationResponse, openapi_extra=body_schema(GenerationBody))
    async def generations(
        self,
        request: Request,
        x_tenant_id: str | None = Header(default=None),
        authorization: str | None = Header(default=None),
    ) -> GenerationResponse:
        body = await read_json_body(request, GenerationBody, self.max_body_bytes)
        tenant = self.pipeline.tenant(x_tenant_id, authorization)
        width, height = body.dimensions() or (None, None)
        served = await self.pipeline.generate(
            ImageRequest(
                prompt=body.prompt,
                n=body.n,
                width=width,
                height=height,
                steps=body.steps,
                seed=body.seed,
                tenant=tenant,
            )
        )
        return GenerationResponse(
            created=served.created,
            data=[ImageData(b64_json=base64.b64encode(png).decode("ascii")) for png in served.images],
            modm=served.decision,
        )

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "mode": self.pipeline.mode.value}

    @api.get("/v1/stats")
    async def stats(self, authorization: str | None = Header(default=None)) -> dict:
        self.pipeline.authenticate(authorization)
        return await self.pipeline.stats()

    @api.get("/v1/cache/{entry_id}")
    async def cached_image(
        self,
        entry_id: int,
        x_tenant_id: str | None = Header(default=None),
        authorization: str | None = Header(default=None),
    ) -> Response:
        """The PNG of a cached image (e.g. the one a hit was refined from), for the tenants that may retrieve it."""
        png = await self.pipeline.cached_image(entry_id, self.pipeline.tenant(x_tenant_id, authorization))
        return Response(content=png, media_type="image/png")

    async def drain_admissions(self) -> int:
        """Wait for background admissions (tests and graceful shutdown); returns how many were pending."""
        return await self.pipeline.drain_admissions()
