"""Router: the HTTP ingress, an adapter between FastAPI and the Ray-free request pipeline (modm.serving).

It loads no model and decides nothing: HTTP bodies and headers become pipeline calls, deployment handles become the
pipeline's backends (deployments/handles.py), and the pipeline's answers and refusals become JSON responses. The
OpenAI Images API (modm.serving.images_api): generations, edits, images answered as signed links, models.
"""

# No `from __future__ import annotations`: Serve's class-based view hands FastAPI the endpoints' annotations as they
# are, and FastAPI must see the `Request` class itself, not the string "Request".
import base64

from fastapi import Header, Query, Request, Response
from ray import serve

from deployments.api import IMAGE_REQUEST_ERRORS, error_responses
from deployments.cache_index import cache_backend
from deployments.handles import HandleProxy
from deployments.ingress import api, body_schema, multipart_schema, read_form, read_json_body, validate_form
from deployments.metrics import RouterMetrics
from modm.config import SystemConfig
from modm.roles import ModelRole
from modm.serving import Backends, RequestPipeline
from modm.serving.images_api import EditBody, GenerationBody, ImageData, ImagesResponse, ModelCard, ModelList
from modm.serving.request import DeliveredImage, Delivery, ServedImages

EDIT_FILES = {
    "image": "The image to edit: PNG, JPEG or WebP, opaque, no side over the model's max_size (also as image[]).",
    "mask": "Refused (400): masks are not served.",
}


# Decorated here, not in the builder: serve.ingress rewrites `api`'s routes, and every replica re-imports this module
# (the app object is not pickled by value), so the rewrite must happen at import time.
@serve.ingress(api)
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
        signing_key: str | None = None,
    ):
        config = SystemConfig.model_validate(system)
        models = {ModelRole.LARGE: HandleProxy(large)}
        if small is not None:
            models[ModelRole.SMALL] = HandleProxy(small)
        backends = Backends(
            models=models,
            cache=None if cache is None else cache_backend(cache),  # a handle, or CacheHandles (readers + writer)
            **{
                name: HandleProxy(handle)
                for name, handle in (("embedder", embedder), ("monitor", monitor), ("store", store))
                if handle is not None
            },
        )
        self.limits = config.limits
        self.pipeline = RequestPipeline(
            config,
            backends,
            metrics=RouterMetrics(config.mode.value),
            signing_key=None if signing_key is None else bytes.fromhex(signing_key),
        )
        await self.pipeline.start()  # runs cache.warm: the app is not RUNNING until the cache is warm

    @api.post(
        "/v1/images/generations",
        response_model=ImagesResponse,
        responses=error_responses(*IMAGE_REQUEST_ERRORS),
        openapi_extra=body_schema(GenerationBody),
    )
    async def generations(
        self,
        request: Request,
        x_tenant_id: str | None = Header(default=None),
        authorization: str | None = Header(default=None),
    ) -> ImagesResponse:
        body = await read_json_body(request, GenerationBody, self.limits.max_body_bytes)
        tenant = self.pipeline.tenant(x_tenant_id, authorization)
        served = await self.pipeline.generate(body.image_request(tenant))
        return await self._answer(request, served, body.delivery(), body, tenant)

    @api.post(
        "/v1/images/edits",
        response_model=ImagesResponse,
        responses=error_responses(*IMAGE_REQUEST_ERRORS),
        openapi_extra=multipart_schema(EditBody, EDIT_FILES, required=("image",)),
    )
    async def edits(
        self,
        request: Request,
        x_tenant_id: str | None = Header(default=None),
        authorization: str | None = Header(default=None),
    ) -> ImagesResponse:
        """img2img of the uploaded image toward the prompt, at `strength`; the results are not cached."""
        fields, files = await read_form(request, self.limits.max_upload_bytes)
        body = validate_form(EditBody, fields)
        tenant = self.pipeline.tenant(x_tenant_id, authorization)
        served = await self.pipeline.edit(body.edit_request(tenant, files))
        return await self._answer(request, served, body.delivery(), body, tenant)

    async def _answer(
        self, request: Request, served: ServedImages, delivery: Delivery, body, tenant: str
    ) -> ImagesResponse:
        delivered = await self.pipeline.deliver(served.images, delivery, tenant)
        return ImagesResponse(
            created=served.created,
            data=[self._image_data(request, image) for image in delivered],
            output_format=delivery.image_format,
            quality=body.quality,
            size=f"{served.width}x{served.height}",
            modm=served.decision,
        )

    @staticmethod
    def _image_data(request: Request, image: DeliveredImage) -> ImageData:
        if image.link is None:
            return ImageData(b64_json=base64.b64encode(image.data).decode("ascii"))
        url = request.url_for("stored_image", image_id=image.link.image_id).include_query_params(
            expires=image.link.expires, signature=image.link.signature
        )
        return ImageData(url=str(url))

    @api.get(
        "/v1/images/{image_id}",
        name="stored_image",
        response_class=Response,
        responses={
            200: {"content": {f"image/{f}": {} for f in ("png", "jpeg", "webp")}, "description": "The image."},
            **error_responses(401, 404, 422),
        },
    )
    async def stored_image(
        self,
        image_id: str,
        expires: int = Query(description="The link's expiry (seconds since the epoch)."),
        signature: str = Query(description="The link's HMAC signature."),
        x_tenant_id: str | None = Header(default=None),
        authorization: str | None = Header(default=None),
    ) -> Response:
        """An image answered as a URL (response_format url): opens without an API key until the link expires."""
        stored = await self.pipeline.stored_image(image_id, expires, signature, x_tenant_id, authorization)
        return Response(content=stored.data, media_type=stored.media_type)

    @api.get("/v1/models", response_model=ModelList, responses=error_responses(401))
    async def models(self, authorization: str | None = Header(default=None)) -> ModelList:
        self.pipeline.authenticate(authorization)
        return self.pipeline.models()

    @api.get("/v1/models/{model_id}", response_model=ModelCard, responses=error_responses(401, 404))
    async def model(self, model_id: str, authorization: str | None = Header(default=None)) -> ModelCard:
        self.pipeline.authenticate(authorization)
        return self.pipeline.model(model_id)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "mode": self.pipeline.mode.value}

    @api.get("/v1/stats", responses=error_responses(401))
    async def stats(self, authorization: str | None = Header(default=None)) -> dict:
        self.pipeline.authenticate(authorization)
        return await self.pipeline.stats()

    @api.get(
        "/v1/cache/{entry_id}",
        response_class=Response,
        responses={
            200: {"content": {"image/png": {}}, "description": "The cached image."},
            **error_responses(400, 401, 403, 404, 422),
        },
    )
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
