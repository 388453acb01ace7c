"""`ModelService`: one model replica's requests, Ray-free: PNG bytes and plain numbers in and out, one `Generator`.

The Serve deployment (`deployments.model.ModelServer`) and in-process callers call the same methods with the same
arguments; model compute time goes to an injected `ModelMetricsSink` (Prometheus in the deployment,
`InMemoryModelMetrics` in process).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from typing import Protocol

import numpy as np
import torch

from modm.config.feature_cache import FEATURE_CACHE_INFO_KEY
from modm.config.schema import ModelSpec
from modm.generation.generator import GenerationRequest
from modm.generation.interface import Generator, Operation
from modm.images import decode_png, png_bytes
from modm.roles import ModelRole

__all__ = ["InMemoryModelMetrics", "ModelMetricsSink", "ModelService", "PROFILE_PROMPT"]

logger = logging.getLogger(__name__)

PROFILE_PROMPT = "a dog riding a bike"


class ModelMetricsSink(Protocol):
    def observe(self, task: str, seconds: float) -> None:
        """One finished `task` ("generate", "refine" or "resume") took `seconds` (its batch's, when batched)."""
        ...

    def batch(self, size: int) -> None:
        """One pass of the model ran `size` requests together."""
        ...

    # Optional: `feature_cache(kind, skipped, total)`, one feature-cached generation's hooked-module calls that
    # diffusers' hook skipped, of `total` (a sink without it does not count them).


class InMemoryModelMetrics:
    """Counts and total seconds per task, and passes per batch size, in this process (bounded)."""

    def __init__(self):
        self.count: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)
        self.batch_sizes: dict[int, int] = defaultdict(int)
        self.feature_cache_calls: dict[str, int] = defaultdict(int)  # "skipped" and "total", over all generations

    def feature_cache(self, kind: str, skipped: int, total: int) -> None:
        self.feature_cache_calls["skipped"] += skipped
        self.feature_cache_calls["total"] += total

    def batch(self, size: int) -> None:
        self.batch_sizes[size] += 1

    def observe(self, task: str, seconds: float) -> None:
        self.count[task] += 1
        self.seconds[task] += seconds


class ModelService:
    """A model's requests over one generator; `snapshot_steps` set: NIRVANA mode, whose full generations also return
    their latents after these steps."""

    def __init__(
        self,
        generator: Generator,
        spec: ModelSpec,
        *,
        snapshot_steps: tuple[int, ...] = (),
        metrics: ModelMetricsSink | None = None,
    ):
        self.generator = generator
        self.spec = spec
        self.role = generator.name
        self.snapshot_steps = tuple(snapshot_steps)
        self.metrics = InMemoryModelMetrics() if metrics is None else metrics
        generator.check_operations(self.operations_needed())
        generator.costs.add_listener(self.metrics.batch)
        self._latency_s: float | None = spec.profiled_latency_s
        self._profile_lock = asyncio.Lock()

    def operations_needed(self) -> set[Operation]:
        """What this replica's role asks of its model: refining for MoDM's small model, NIRVANA's snapshots and
        resumes when snapshot_steps are set."""
        needed = {Operation.TXT2IMG}
        if self.role == ModelRole.SMALL:
            needed.add(Operation.IMG2IMG)
        if self.snapshot_steps:
            needed |= {Operation.SNAPSHOTS, Operation.RESUME}
        return needed

    async def generate(self, prompt: str, width: int, height: int, steps: int, seed: int) -> bytes:
        """Full txt2img; returns PNG bytes."""
        start = time.perf_counter()
        image = await self.generator.txt2img(GenerationRequest(prompt, width, height, steps, seed))
        self.metrics.observe("generate", time.perf_counter() - start)
        return self._png(image)

    async def refine(
        self, prompt: str, png: bytes, strength: float, width: int, height: int, steps: int, seed: int
    ) -> bytes:
        """img2img of a cached image at `strength` (= 1 - k/T); returns PNG bytes."""
        start = time.perf_counter()
        request = GenerationRequest(prompt, width, height, steps, seed)
        image = await self.generator.img2img(request, decode_png(png), strength)
        self.metrics.observe("refine", time.perf_counter() - start)
        return self._png(image)

    async def generate_with_snapshots(
        self, prompt: str, width: int, height: int, steps: int, seed: int
    ) -> tuple[bytes, dict[int, np.ndarray]]:
        """NIRVANA's miss: full txt2img, plus the latents after each snapshot step (float16, for its cache)."""
        start = time.perf_counter()
        request = GenerationRequest(prompt, width, height, steps, seed)
        image, latents = await self.generator.txt2img_with_snapshots(request, self.snapshot_steps)
        self.metrics.observe("generate", time.perf_counter() - start)
        return self._png(image), {k: v.to(torch.float16).numpy() for k, v in latents.items()}

    async def resume(
        self, prompt: str, latents: np.ndarray, steps_done: int, width: int, height: int, steps: int, seed: int
    ) -> bytes:
        """NIRVANA's hit: the last steps - steps_done steps from cached latents."""
        start = time.perf_counter()
        request = GenerationRequest(prompt, width, height, steps, seed)
        image = await self.generator.resume(request, torch.from_numpy(np.asarray(latents)), steps_done)
        self.metrics.observe("resume", time.perf_counter() - start)
        return self._png(image)

    def _png(self, image) -> bytes:
        """The answer's PNG; a feature-cached generation's skip counts go into its metrics and, as a text chunk
        (`FEATURE_CACHE_INFO_KEY`), into the PNG, from which the request pipeline copies them into its decision."""
        counts = image.info.get(FEATURE_CACHE_INFO_KEY)
        if counts is None:
            return png_bytes(image)
        record = getattr(self.metrics, "feature_cache", None)
        if record is not None:
            record(counts["kind"], counts["skipped"], counts["total"])
        return png_bytes(image, {FEATURE_CACHE_INFO_KEY: json.dumps(counts)})

    async def profile(self) -> float:
        """Seconds per full generation at the spec's default size and steps (MoDM profiles P = 60 / latency);
        measured once (warm-up, then one timed run), however many callers ask at the same time."""
        async with self._profile_lock:
            if self._latency_s is None:
                side = self.spec.default_size
                req = GenerationRequest(PROFILE_PROMPT, side, side, self.spec.num_inference_steps, 0)
                await self.generator.txt2img(req)  # warm-up
                start = time.perf_counter()
                await self.generator.txt2img(req)
                self._latency_s = time.perf_counter() - start
                logger.info("%s model profiled: %.3f s per full generation", self.role, self._latency_s)
            return self._latency_s

    async def info(self) -> dict:
        """What the request pipeline needs to validate requests before sending any work (async, as every call a
        pipeline makes of a model pool)."""
        return {
            "role": self.role,
            "source": self.spec.source,
            "size_multiple": self.generator.size_multiple,
            "default_size": self.spec.default_size,
            "max_size": self.spec.max_size,
            "num_inference_steps": self.spec.num_inference_steps,
            "operations": sorted(op.value for op in self.generator.operations),
            "max_batch_size": self.generator.costs.max_batch_size,  # 1: the replica runs one request at a time
        }

    async def capacity(self) -> dict:
        """What this replica's batches cost, measured as it serves (`StepCosts.as_dict()`), and its full
        generation's step count: the monitor's throughput and admission control's batch latency
        (`modm.policy.BatchCapacity`)."""
        return {**self.generator.costs.as_dict(), "num_inference_steps": self.spec.num_inference_steps}

    def stats(self) -> dict:
        """The generator's counters: generations started, generations stopped by a cancel, denoising steps run."""
        return self.generator.counters.as_dict()
