"""What the request pipeline calls, as protocols: the embedder, the image or latent cache, the model pools, the
monitor and the clock. In one process they are the services of `modm.serving.services` (and
`modm.generation.ModelService`); behind Ray Serve, thin proxies over deployment handles with the same method names.

Backends raise `ReplicaLost` when the process that took a call went away before answering (the pipeline retries
once) and `QueueFull` when a pool's bounded queue refused the call; any other exception is the call's own failure.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from modm.cache.records import Lookup
from modm.roles import ModelRole
from modm.serving.response_store import StoredImage

__all__ = [
    "Backends",
    "Clock",
    "ImageCacheBackend",
    "LatentCacheBackend",
    "LoadBoardLink",
    "ModelPool",
    "MonitorLink",
    "ResponseStoreBackend",
    "SystemClock",
    "TextEmbedder",
]


class TextEmbedder(Protocol):
    async def embed_text(self, prompt: str) -> np.ndarray:
        """The prompt's retrieval embedding, (dim,) float32, L2-normalised."""

    async def embed_for_cache(self, png: bytes, prompt: str) -> np.ndarray:
        """The cache key of a generated image: its image embedding (text->image mode) or its prompt's."""


class ImageCacheBackend(Protocol):
    async def lookup(self, embedding: np.ndarray, namespaces: list[str], min_score: float) -> Lookup:
        """The best match in `namespaces` and, when it scores at least `min_score`, its image (None when the entry
        was evicted since the query found it)."""

    async def png_in_scope(self, entry_id: int, namespaces: list[str]) -> bytes | None:
        """The entry's image if it is live and in one of `namespaces`, else None (unknown and foreign look alike)."""

    async def add(self, png: bytes, embedding: np.ndarray, prompt: str, tenant: str, source_model: str, k: int) -> int:
        """Admit an image; returns its entry id."""

    async def cached_prompts(self, namespace: str) -> list[str]: ...

    async def stats(self) -> dict: ...


class LatentCacheBackend(Protocol):
    """NIRVANA's cache of the large model's intermediate latents, per namespace (tenant, size, T)."""

    async def lookup(self, embedding: np.ndarray, namespace: str) -> dict:
        """{"hit": False, "score": s} or {"hit": True, "score": s, "k": k, "latents": array}."""

    async def add(self, embedding: np.ndarray, namespace: str, latents: dict[int, np.ndarray]) -> int: ...

    async def stats(self) -> dict: ...


# How often a router reads a batching pool's measured batch costs (`ModelPool.capacity`), and how long a reader
# waits for a busy replica's answer (the call queues behind generations like any other) before keeping its last view.
CAPACITY_POLL_S = 5.0
CAPACITY_POLL_TIMEOUT_S = 2.0


class ModelPool(Protocol):
    """One model's replicas (one, in process). Method names and signatures of `modm.generation.ModelService`."""

    async def info(self) -> dict:
        """{"size_multiple", "default_size", "max_size", "num_inference_steps", ...}."""

    async def profile(self) -> float:
        """Seconds per full generation at the default size and steps."""

    async def capacity(self) -> dict:
        """What one replica's batches cost, measured as it serves (`modm.policy.BatchCapacity.from_costs`)."""

    async def generate(self, prompt: str, width: int, height: int, steps: int, seed: int) -> bytes: ...

    async def refine(
        self, prompt: str, png: bytes, strength: float, width: int, height: int, steps: int, seed: int
    ) -> bytes: ...

    async def generate_with_snapshots(
        self, prompt: str, width: int, height: int, steps: int, seed: int
    ) -> tuple[bytes, dict[int, np.ndarray]]: ...

    async def resume(
        self, prompt: str, latents: np.ndarray, steps_done: int, width: int, height: int, steps: int, seed: int
    ) -> bytes: ...


class MonitorLink(Protocol):
    """The global monitor: receives the window counts, answers the replica allocation."""

    async def report(self, counts: dict) -> None: ...

    async def get_allocation(self) -> dict: ...


class LoadBoardLink(Protocol):
    """Where several routers share their requests in flight per pool (modm.policy.load_view.LoadBoard)."""

    async def report(self, router_id: str, in_flight: dict[str, int], ttl_s: float) -> dict[str, int]:
        """Record this router's counts; answers the sums of the other live routers'."""


class ResponseStoreBackend(Protocol):
    """Where images answered as URLs wait for their links (modm.serving.response_store.ResponseStore)."""

    async def put(self, data: bytes, media_type: str, tenant: str) -> str:
        """Keep one image; returns its id."""

    async def get(self, image_id: str) -> StoredImage | None:
        """The image, or None when it is unknown, expired or dropped."""


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall(self) -> float:
        """Seconds since the epoch (the response's `created`)."""

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.perf_counter()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass
class Backends:
    """Everything a pipeline calls. `models` holds the large pool, and the small one in MoDM mode; `cache` is the
    image cache (MoDM) or the latent cache (NIRVANA); vanilla needs neither it nor the embedder. `store` keeps the
    images answered as URLs (without it, response_format "url" is refused). `load_board`: with several routers,
    where they share their load (without it, a router sees only its own requests)."""

    models: dict[ModelRole, ModelPool]
    embedder: TextEmbedder | None = None
    cache: ImageCacheBackend | LatentCacheBackend | None = None
    monitor: MonitorLink | None = None
    store: ResponseStoreBackend | None = None
    load_board: LoadBoardLink | None = None
    clock: Clock = field(default_factory=SystemClock)
