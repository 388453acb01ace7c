"""Images as the client asked for them: encoded in its format, and inline or written to the response store (before
the answer is sent) with a signed link each; and the image behind such a link."""

from __future__ import annotations

import asyncio
import logging

from modm.images import ImageFormat, encode_as
from modm.serving.backends import ResponseStoreBackend
from modm.serving.calls import Call
from modm.serving.errors import NotFound, RequestInvalid, StoreFailed
from modm.serving.links import LinkSigner
from modm.serving.request import DeliveredImage, Delivery
from modm.serving.response_store import StoredImage

logger = logging.getLogger(__name__)

__all__ = ["ImageDelivery"]


class ImageDelivery:
    def __init__(self, store: ResponseStoreBackend | None, signer: LinkSigner, link_ttl_s: float, call: Call):
        self.store, self.signer, self.link_ttl_s, self._call = store, signer, link_ttl_s, call

    async def deliver(self, images: list[bytes], delivery: Delivery, tenant: str) -> list[DeliveredImage]:
        media_type = delivery.image_format.media_type
        if delivery.image_format is not ImageFormat.PNG:
            images = [
                await asyncio.to_thread(encode_as, png, delivery.image_format, delivery.compression) for png in images
            ]
        if not delivery.as_url:
            return [DeliveredImage(media_type, data=data) for data in images]
        store = self.store
        if store is None:
            raise RequestInvalid("response_format 'url' needs a response store, and this deployment has none")
        try:
            ids = await asyncio.gather(
                *[
                    self._call(lambda data=data: store.put(data, media_type, tenant), "response store")
                    for data in images
                ]
            )
        except Exception as err:
            logger.exception("the response store failed")
            raise StoreFailed(f"the response store failed: {type(err).__name__}") from None
        return [
            DeliveredImage(media_type, link=self.signer.sign(image_id, tenant, self.link_ttl_s)) for image_id in ids
        ]

    async def stored_image(self, image_id: str, expires: int, signature: str, caller: str | None) -> StoredImage:
        """Links open without credentials; a `caller` who presented some must be the image's tenant. Unknown,
        expired, dropped, badly signed and other tenants' images get the same 404, so a link reveals nothing about
        the others."""
        not_found = NotFound("no such image, or its link expired")
        if self.store is None:
            raise not_found
        stored = await self._call(lambda: self.store.get(image_id), "response store")
        if stored is None or not self.signer.valid(image_id, stored.tenant, expires, signature):
            raise not_found
        if caller is not None and caller != stored.tenant:
            raise not_found
        return stored
