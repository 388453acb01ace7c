"""The response store: images answered as URLs (response_format "url"), kept until their links expire, in memory
and within a byte budget (the oldest dropped first). Not the image cache: a response must stay fetchable for its
link's lifetime, whatever the cache admits or evicts. One instance serves every Router replica (the ResponseStore
deployment); in one process (`modm demo`, tests) it is a plain object."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ResponseStore", "StoredImage"]


@dataclass(frozen=True)
class StoredImage:
    data: bytes
    media_type: str
    tenant: str
    expires_at: float  # on the store's monotonic clock


class ResponseStore:
    def __init__(self, ttl_s: float, max_bytes: int, monotonic: Callable[[], float] = time.monotonic):
        self.ttl_s, self.max_bytes = ttl_s, max_bytes
        self._monotonic = monotonic
        self._images: OrderedDict[str, StoredImage] = OrderedDict()  # oldest first
        self._bytes = 0
        self.dropped = 0  # images removed for room before they expired

    async def put(self, data: bytes, media_type: str, tenant: str) -> str:
        """Store one image for ttl_s; returns its id (random, unguessable)."""
        if len(data) > self.max_bytes:
            raise ValueError(f"an image of {len(data)} bytes exceeds the response store's {self.max_bytes} bytes")
        self._expire()
        while self._bytes + len(data) > self.max_bytes:
            self._remove(next(iter(self._images)))
            self.dropped += 1
        image_id = uuid.uuid4().hex
        self._images[image_id] = StoredImage(data, media_type, tenant, self._monotonic() + self.ttl_s)
        self._bytes += len(data)
        return image_id

    async def get(self, image_id: str) -> StoredImage | None:
        """The image, or None when it is unknown, expired or was dropped for room."""
        self._expire()
        return self._images.get(image_id)

    async def stats(self) -> dict:
        self._expire()
        return {"images": len(self._images), "bytes": self._bytes, "dropped": self.dropped}

    def _expire(self) -> None:
        now = self._monotonic()
        # Every image has the same TTL, so insertion order is expiry order.
        while self._images and next(iter(self._images.values())).expires_at <= now:
            self._remove(next(iter(self._images)))

    def _remove(self, image_id: str) -> None:
        self._bytes -= len(self._images.pop(image_id).data)
