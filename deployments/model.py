"""LargeModel and SmallModel: one diffusers pipeline per replica (one GPU each in GPU configs).

Requests and answers are bytes (PNG) and plain numbers, never tensors. The replica also carries the global
monitor's replica target for its deployment and reports it to Serve's autoscaler (see deployments/autoscaling.py).
"""

from __future__ import annotations

import asyncio
import io
import logging
import time

import torch
from PIL import Image

from deployments.constants import TARGET_REPLICAS_METRIC
from deployments.metrics import ModelMetrics
from modm.config import ModelSpec
from modm.engine import png_bytes
from modm.generation import DiffusionGenerator, GenerationRequest

logger = logging.getLogger("ray.serve")


class ModelServer:
    def __init__(self, spec: dict, role: str):
        self.spec = ModelSpec.model_validate(spec)
        self.role = role
        self.generator = DiffusionGenerator.from_spec(self.spec, role)
        if role == "small":
            self.generator.refine_pipe  # noqa: B018 -- fail at start-up if this model cannot refine
        self.metrics = ModelMetrics(role)
        self._target_replicas: int | None = None
        self._latency_s: float | None = self.spec.profiled_latency_s
        self._profile_lock = asyncio.Lock()
        logger.info("%s model ready: %s on %s", role, self.spec.source, self.generator.device)

    def _request(self, prompt: str, width: int, height: int, steps: int, seed: int) -> GenerationRequest:
        return GenerationRequest(prompt=prompt, width=width, height=height, steps=steps, seed=seed)

    async def generate(self, prompt: str, width: int, height: int, steps: int, seed: int) -> bytes:
        """Full txt2img; returns PNG bytes."""
        start = time.perf_counter()
        image = await asyncio.to_thread(self.generator.txt2img, self._request(prompt, width, height, steps, seed))
        self.metrics.observe("generate", time.perf_counter() - start)
        return png_bytes(image)

    async def refine(self, prompt: str, png: bytes, strength: float, width: int, height: int, steps: int,
                     seed: int) -> bytes:
        """img2img of a cached image at `strength` (= 1 - k/T); returns PNG bytes."""
        start = time.perf_counter()
        source = Image.open(io.BytesIO(png))
        image = await asyncio.to_thread(self.generator.img2img, self._request(prompt, width, height, steps, seed),
                                        source, strength)
        self.metrics.observe("refine", time.perf_counter() - start)
        return png_bytes(image)

    async def profile(self) -> float:
        """Seconds per full generation at the spec's default size and steps (MoDM profiles P = 60 / latency)."""
        async with self._profile_lock:
            if self._latency_s is None:
                req = self._request("a dog riding a bike", self.spec.default_size, self.spec.default_size,
                                    self.spec.num_inference_steps, 0)
                await asyncio.to_thread(self.generator.txt2img, req)  # warm-up
                start = time.perf_counter()
                await asyncio.to_thread(self.generator.txt2img, req)
                self._latency_s = time.perf_counter() - start
                logger.info("%s model profiled: %.3f s per full generation", self.role, self._latency_s)
            return self._latency_s

    def info(self) -> dict:
        """What the router needs to validate requests before sending any work."""
        return {"role": self.role, "source": self.spec.source, "size_multiple": self.generator.size_multiple,
                "default_size": self.spec.default_size, "max_size": self.spec.max_size,
                "num_inference_steps": self.spec.num_inference_steps}

    def set_target_replicas(self, n: int) -> None:
        self._target_replicas = int(n)

    def record_autoscaling_stats(self) -> dict[str, float]:
        return {} if self._target_replicas is None else {TARGET_REPLICAS_METRIC: float(self._target_replicas)}

    def check_health(self) -> None:
        # Cheap: the pipeline is loaded and its device answers.
        if self.generator.pipe is None:
            raise RuntimeError(f"{self.role} model pipeline is not loaded")
        torch.zeros(1, device=self.generator.device).add_(1)
