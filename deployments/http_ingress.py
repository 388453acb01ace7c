"""Ingress: the HTTP front of the app, a stateless adapter between FastAPI and the Router replicas.

It parses and checks bodies (deployments/ingress.py), calls a Router replica through a handle for the work, builds
the answer's URLs and renders refusals in one JSON error shape. It holds nothing a request needs after it, so it
runs as several replicas, and a Router replica that dies mid-request costs the request one re-drive on another
replica (the pipeline is deterministic given the request's seed, so the re-drive answers the same images), not a
bare 500 from Serve's proxy: that is what the proxy answers for an ingress replica that dies, which is why the
pipeline does not run in this one. When no Router replica takes the re-drive either, the answer is 503 with
Retry-After.

The OpenAI Images API (modm.serving.images_api): generations, edits, images answered as signed links, models.
"""

# No `from __future__ import annotations`: Serve's class-based view hands FastAPI the endpoints' annotations as they
# are, and FastAPI must see the `Request` class itself, not the string "Request".
import base64
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Header, Query, Request, Response
from ray import serve
from ray.serve.exceptions import DeploymentUnavailableError

from deployments.api import IMAGE_REQUEST_ERRORS, error_responses
from deployments.handles import HandleProxy
from deployments.ingress import api, body_schema, multipart_schema, read_form, read_json_body, validate_form
from deployments.metrics import IngressMetrics
from modm.config.schema import RequestLimits
from modm.serving.calls import retry_if_replica_lost
from modm.serving.errors import ReplicaLost, RequestRefused
from modm.serving.images_api import EditBody, GenerationBody, ImageData, ImagesResponse, ModelCard, ModelList
from modm.serving.request import DeliveredImage

logger = logging.getLogger("ray.serve")
T = TypeVar("T")

EDIT_FILES = {
    "image": "The image to edit: PNG, JPEG or WebP, opaque, no side over the model's max_size (also as image[]).",
    "mask": "Refused (400): masks are not served.",
}
# When no Router replica could take a request: Serve replaces a lost one within seconds.
ROUTER_RETRY_AFTER_S = 2


class RouterUnavailable(RequestRefused):
    """503: the Router replica holding the request died, and no other one took it again."""

    status, kind = 503, "overloaded"


async def redriven_once(call: Callable[[], Awaitable[T]], count: Callable[[str], None]) -> T:
    """`call()`, once more if the Router replica that took it was lost (Serve routes the second call to a live
    replica), counting "redriven"; a 503 with Retry-After, counting "router_unavailable", if that one is lost too or
    no replica is up."""
    try:
        return await retry_if_replica_lost(call, "Router", on_retry=lambda: count("redriven"))
    except (ReplicaLost, DeploymentUnavailableError) as err:
        count("router_unavailable")
        logger.warning("no Router replica answered (%s): 503", type(err).__name__)
        raise RouterUnavailable(
            f"the request's router was lost and no other took it; retry in {ROUTER_RETRY_AFTER_S}s",
            retry_after_s=ROUTER_RETRY_AFTER_S,
        ) from None


# Decorated here, not in the builder: serve.ingress rewrites `api`'s routes, and every replica re-imports this module
# (the app object is not pickled by value), so the rewrite must happen at import time.
@serve.ingress(api)
class Ingress:
    def __init__(self, router, limits: dict, mode: str):
        self.router = HandleProxy(router)
        self.limits = RequestLimits.model_validate(limits)
        self.metrics = IngressMetrics(mode)
        self.counts: Counter[str] = Counter()  # this replica's re-drives, in /v1/stats

    async def _route(self, method: str, *args: Any) -> Any:
        """`method` on a Router replica (re-driven once if that one died); its refusal raised."""
        call = getattr(self.router, method)
        result = await redriven_once(lambda: call(*args), self._count)
        if isinstance(result, RequestRefused):
            raise result
        return result

    def _count(self, outcome: str) -> None:
        self.counts[outcome] += 1
        self.metrics.router_lost(outcome)

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
        served, delivered = await self._route("generate", body, x_tenant_id, authorization)
        return self._answer(request, served, delivered, body)

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
        served, delivered = await self._route("edit", body, files, x_tenant_id, authorization)
        return self._answer(request, served, delivered, body)

    def _answer(self, request: Request, served, delivered: list[DeliveredImage], body) -> ImagesResponse:
        delivery = body.delivery()
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
        stored = await self._route("stored_image", image_id, expires, signature, x_tenant_id, authorization)
        return Response(content=stored.data, media_type=stored.media_type)

    @api.get("/v1/models", response_model=ModelList, responses=error_responses(401))
    async def models(self, authorization: str | None = Header(default=None)) -> ModelList:
        return await self._route("models", authorization)

    @api.get("/v1/models/{model_id}", response_model=ModelCard, responses=error_responses(401, 404))
    async def model(self, model_id: str, authorization: str | None = Header(default=None)) -> ModelCard:
        return await self._route("model", model_id, authorization)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        """OK when a Router replica answers (the whole request path is up)."""
        return await self._route("healthz")

    @api.get("/v1/stats", responses=error_responses(401))
    async def stats(self, authorization: str | None = Header(default=None)) -> dict:
        """The answering Router's counts (with the cluster's queue depths), and this Ingress replica's re-drives."""
        stats = await self._route("stats", authorization)
        return {**stats, "ingress": {key: self.counts[key] for key in ("redriven", "router_unavailable")}}

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
        png = await self._route("cached_image", entry_id, x_tenant_id, authorization)
        return Response(content=png, media_type="image/png")
