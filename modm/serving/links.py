"""Signed links to stored images: HMAC-SHA256 over (image id, owning tenant, expiry), so that a link opens its
image without an API key until it expires, and a link cannot be altered to open another image, outlive its expiry or
claim another tenant's image."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from modm.serving.request import SignedLink

__all__ = ["LinkSigner"]


class LinkSigner:
    def __init__(self, key: bytes, wall: Callable[[], float]):
        if len(key) < 16:
            raise ValueError("a link signing key needs at least 16 bytes")
        self._key, self._wall = key, wall

    def _signature(self, image_id: str, tenant: str, expires: int) -> str:
        message = f"{image_id}\n{tenant}\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def sign(self, image_id: str, tenant: str, ttl_s: float) -> SignedLink:
        expires = int(self._wall() + ttl_s)
        return SignedLink(image_id, expires, self._signature(image_id, tenant, expires))

    def valid(self, image_id: str, tenant: str, expires: int, signature: str) -> bool:
        """True while the link is unexpired and was signed here for this image and tenant."""
        if expires < self._wall():
            return False
        return hmac.compare_digest(self._signature(image_id, tenant, expires), signature)
