"""The image cache as one backend when reader replicas serve its lookups: reads go to the readers (CacheFollowers of
the writer's directory), admissions and the counters to the writer (the one ImageCache owner)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from modm.cache.records import Lookup
from modm.serving.backends import ImageCacheBackend
from modm.serving.calls import retry_if_replica_lost
from modm.serving.errors import ReplicaLost

__all__ = ["ReadWriteCache"]

logger = logging.getLogger(__name__)


class ReadWriteCache:
    """An ImageCacheBackend over a pool of `reader` replicas and the `writer`.

    A read whose reader replica died under it is tried once more on the readers (the transport picks a live
    replica); should that one be lost too, the writer answers it, as it holds the whole cache: losing readers
    costs latency, never a lookup. A reader's view trails the writer by up to one follow interval, so an entry is
    found by readers shortly after its admission returns, not at once.
    """

    def __init__(self, reader: ImageCacheBackend, writer: ImageCacheBackend):
        self.reader, self.writer = reader, writer
        self.counters = {"reader_retries": 0, "writer_fallbacks": 0}

    async def lookup(self, embedding: np.ndarray, namespaces: list[str], min_score: float) -> Lookup:
        return await self._read(lambda cache: cache.lookup(embedding, namespaces, min_score), "lookup")

    async def png_in_scope(self, entry_id: int, namespaces: list[str]) -> bytes | None:
        return await self._read(lambda cache: cache.png_in_scope(entry_id, namespaces), "image")

    async def cached_prompts(self, namespace: str) -> list[str]:
        return await self._read(lambda cache: cache.cached_prompts(namespace), "cached prompts")

    async def add(self, png: bytes, embedding: np.ndarray, prompt: str, tenant: str, source_model: str, k: int) -> int:
        return await self.writer.add(png, embedding, prompt, tenant, source_model, k)

    async def stats(self) -> dict:
        """The writer's counters, with one reader replica's view and lag under "reader" (None while no reader
        answers) and this router's retries and fallbacks."""
        try:
            reader = await retry_if_replica_lost(self.reader.stats, "cache reader")
        except ReplicaLost:
            reader = None
        return {**await self.writer.stats(), "reader": reader, **self.counters}

    async def _read(self, call: Callable[[ImageCacheBackend], Awaitable[Any]], what: str) -> Any:
        try:
            return await retry_if_replica_lost(lambda: call(self.reader), f"cache reader ({what})", self._retried)
        except ReplicaLost as err:
            logger.warning("cache readers lost twice for one %s (%s); the writer answers it", what, err)
            self.counters["writer_fallbacks"] += 1
            return await call(self.writer)

    def _retried(self) -> None:
        self.counters["reader_retries"] += 1
