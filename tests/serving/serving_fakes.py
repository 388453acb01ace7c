"""Fake backends for the request pipeline: no models, no Ray. Each records its calls and can be told to fail."""

from __future__ import annotations

import asyncio
import io
from collections import Counter

import numpy as np
from PIL import Image

from modm.serving.errors import QueueFull, ReplicaLost

DIM = 8


def png_of(seed: int) -> bytes:
    """A 2x2 PNG whose pixels encode `seed`, so a response can be traced to the call that made it."""
    pixels = np.full((2, 2, 3), seed % 256, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def vector_at(cosine: float, axis: int = 0) -> np.ndarray:
    """A unit vector whose cosine with basis vector `axis` is `cosine`."""
    out = np.zeros(DIM, dtype=np.float32)
    out[axis] = cosine
    out[(axis + 1) % DIM] = np.sqrt(max(0.0, 1.0 - cosine**2))
    return out


class FakeEmbedder:
    """Prompts map to given vectors (unknown prompts: the last axis, similar to nothing)."""

    def __init__(self, vectors: dict[str, np.ndarray] | None = None):
        self.vectors = vectors or {}
        self.calls: Counter[str] = Counter()
        self.fail = False

    def _vector(self, prompt: str) -> np.ndarray:
        return self.vectors.get(prompt, vector_at(1.0, DIM - 1))

    async def embed_text(self, prompt: str) -> np.ndarray:
        self.calls["embed_text"] += 1
        if self.fail:
            raise RuntimeError("embedder down")
        return self._vector(prompt)

    async def embed_for_cache(self, png: bytes, prompt: str) -> np.ndarray:
        self.calls["embed_for_cache"] += 1
        return self._vector(prompt)


class FakePool:
    """A model pool: images encode the seed; `gate` holds every call until set; failures are queued per call."""

    def __init__(self, *, size_multiple: int = 8, default_size: int = 64, steps: int = 50, profile_s: float = 1.0):
        self._info = {
            "size_multiple": size_multiple,
            "default_size": default_size,
            "max_size": 1024,
            "num_inference_steps": steps,
        }
        self.profile_s = profile_s
        self.calls: list[tuple] = []
        self.failures: list[BaseException] = []  # raised by the next calls, in order
        self.gate: asyncio.Event | None = None
        self.cancelled = 0
        self.started = 0
        self.capacity_calls = 0
        # What StepCosts.as_dict() reports: nothing measured until a test sets a batching replica's costs.
        self.costs: dict = {"max_batch_size": 1, "mean_batch_size": None, "seconds_per_image_step": {}, "passes": {}}

    async def info(self) -> dict:
        return {**self._info, "max_batch_size": self.costs["max_batch_size"]}

    async def profile(self) -> float:
        return self.profile_s

    async def capacity(self) -> dict:
        self.capacity_calls += 1
        return {**self.costs, "num_inference_steps": self._info["num_inference_steps"]}

    async def _run(self, call: tuple, seed: int) -> bytes:
        self.calls.append(call)
        self.started += 1
        if self.failures:
            raise self.failures.pop(0)
        if self.gate is not None:
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return png_of(seed)

    async def generate(self, prompt, width, height, steps, seed):
        return await self._run(("generate", prompt, width, height, steps, seed), seed)

    async def refine(self, prompt, png, strength, width, height, steps, seed):
        return await self._run(("refine", prompt, round(strength, 6), width, height, steps, seed), seed)

    async def generate_with_snapshots(self, prompt, width, height, steps, seed):
        png = await self._run(("generate_with_snapshots", prompt, width, height, steps, seed), seed)
        return png, {k: np.full((1, 4, 2, 2), k, dtype=np.float16) for k in (5, 10, 15, 20, 25)}

    async def resume(self, prompt, latents, steps_done, width, height, steps, seed):
        return await self._run(("resume", prompt, steps_done, width, height, steps, seed), seed)


def lost() -> ReplicaLost:
    return ReplicaLost("ActorDiedError")


def queue_full() -> QueueFull:
    return QueueFull("64 requests queued", retry_after_s=None)


class FakeLatentCache:
    """NIRVANA's cache: a hit for a prompt vector seen before, at a fixed k."""

    def __init__(self, k: int = 15):
        self.k = k
        self.entries: dict[tuple[bytes, str], dict] = {}
        self.lookups = 0

    async def lookup(self, embedding, namespace):
        self.lookups += 1
        latents = self.entries.get((np.asarray(embedding).tobytes(), namespace))
        if latents is None:
            return {"hit": False, "score": 0.1}
        return {"hit": True, "score": 0.99, "k": self.k, "latents": latents[self.k]}

    async def add(self, embedding, namespace, latents):
        self.entries[(np.asarray(embedding).tobytes(), namespace)] = latents
        return len(self.entries)

    async def stats(self):
        return {"entries": len(self.entries)}


class FakeMonitor:
    def __init__(self, allocation=None):
        self.reports: list[dict] = []
        self.allocation = allocation or {"large": 1, "small": 1}

    async def report(self, counts: dict) -> None:
        self.reports.append(counts)

    async def get_allocation(self) -> dict:
        return self.allocation


class RecordingMetrics:
    def __init__(self):
        self.finished: list[tuple] = []
        self.events: Counter[str] = Counter()

    def request_finished(self, decision, status, model, k, seconds):
        self.finished.append((decision, status, model, k))

    def in_flight(self, model, n):
        self.events[f"in_flight:{model}={n}"] += 1

    def retrieval_overhead(self, seconds):
        self.events["overhead"] += 1

    def retrieval_failed(self):
        self.events["retrieval_failed"] += 1

    def admission_dropped(self):
        self.events["admission_dropped"] += 1
