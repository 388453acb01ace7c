"""LargeModel and SmallModel: one diffusers pipeline per replica (one GPU each in GPU configs).

Requests and answers are bytes (PNG) and plain numbers, never tensors. The replica also carries the global
monitor's replica target for its deployment and reports it to Serve's autoscaler (see deployments/autoscaling.py).
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
import uuid
from collections import Counter

import numpy as np
import ray
import torch
from PIL import Image

from deployments.constants import TARGET_REPLICAS_METRIC
from deployments.metrics import ModelMetrics
from modm.config import ModelSpec
from modm.images import png_bytes
from modm.generation import DiffusionGenerator, GenerationRequest, size_multiple, spec_call_kwargs
from modm.generation.generator import GenerationInterrupted, StepControl
from modm.parallel import ParallelMethod

logger = logging.getLogger("ray.serve")


def _rank_placement(spec: ModelSpec) -> dict:
    """Where the ranks go: inside a Serve replica, into the bundles its deployment declared after the replica's own
    (deployments/app.py: placement_group_bundles), each rank on a GPU when its bundle has one; outside one, a
    placement group the actor group reserves itself."""
    pg = ray.util.get_current_placement_group()
    if pg is not None:
        return {
            "placement_group": pg,
            "first_bundle": 1,
            "use_gpu": pg.bundle_specs[1].get("GPU", 0) > 0,
            "cpus_per_rank": pg.bundle_specs[1].get("CPU", 1),
        }
    return {"use_gpu": spec.device.startswith("cuda") or (spec.device == "auto" and torch.cuda.is_available())}


def _describe_rank(worker, spec: ModelSpec) -> tuple[int, dict]:
    """Runs inside rank 0 of a parallel group: the size multiple (times the ranks rows are split across) and the
    spec's call arguments that the pipeline takes."""
    pipe = worker.parallel.pipe
    multiple = size_multiple(pipe) * (worker.config.world_size if worker.config.is_patch_method else 1)
    return multiple, spec_call_kwargs(pipe, spec)


class ModelServer:
    def __init__(self, spec: dict, role: str, *, snapshot_steps: tuple[int, ...] = ()):
        """`snapshot_steps`: NIRVANA mode, where full generations also return their latents after these steps."""
        self.spec = ModelSpec.model_validate(spec)
        self.snapshot_steps = tuple(snapshot_steps)
        self.role = role
        self.metrics = ModelMetrics(role)
        self.group = None
        if self.spec.parallel.method is not ParallelMethod.NONE:
            # One model on several devices: this replica holds no weights, it drives one rank actor per device.
            from deployments.actor_group import ParallelActorGroup

            self.generator = None
            self.group = ParallelActorGroup(self.spec.parallel, self.spec, **_rank_placement(self.spec)).start()
            self._size_multiple, self._group_kwargs = ray.get(
                self.group.workers[0].__ray_call__.remote(_describe_rank, self.spec)
            )
        else:
            self.generator = DiffusionGenerator.from_spec(self.spec, role)
            self._size_multiple = self.generator.size_multiple
            if role == "small":
                self.generator.refine_pipe  # noqa: B018 -- fail at start-up if this model cannot refine
            if self.snapshot_steps:
                self.generator.check_resumable()
        self._target_replicas: int | None = None
        self._latency_s: float | None = self.spec.profiled_latency_s
        self._profile_lock = asyncio.Lock()
        self.counters: Counter[str] = Counter()  # generations, interrupted, denoising_steps (see stats())
        where = (
            f"{self.spec.parallel.method.value} x{self.spec.parallel.world_size}"
            if self.group is not None
            else str(self.generator.device)
        )
        logger.info("%s model ready: %s on %s", role, self.spec.source, where)

    def _request(self, prompt: str, width: int, height: int, steps: int, seed: int) -> GenerationRequest:
        return GenerationRequest(prompt=prompt, width=width, height=height, steps=steps, seed=seed)

    async def generate(self, prompt: str, width: int, height: int, steps: int, seed: int) -> bytes:
        """Full txt2img; returns PNG bytes."""
        start = time.perf_counter()
        request = self._request(prompt, width, height, steps, seed)
        if self.group is not None:
            image = await self._generate_on_group(request)
        else:
            image = await self._in_thread(self.generator.txt2img, request)
        self.metrics.observe("generate", time.perf_counter() - start)
        return png_bytes(image)

    async def _generate_on_group(self, req: GenerationRequest) -> Image.Image:
        """Like `_in_thread` on one device: when Serve cancels the call, stop the generation at its next step on
        every rank and keep this replica's slot until the ranks have stopped."""
        from deployments.actor_group import ParallelGenerationStopped

        kwargs = {
            "prompt": req.prompt,
            "height": req.height,
            "width": req.width,
            "num_inference_steps": req.steps,
            "guidance_scale": self.spec.guidance_scale,
            "output_type": "pil",
            **self._group_kwargs,
        }
        request_id = uuid.uuid4().hex
        self.counters["generations"] += 1
        result = self.group.submit(kwargs, req.seed, request_id)
        try:
            images = await result  # rank 0's answer; every rank computed the same image
        except asyncio.CancelledError:
            self.group.stop(request_id)
            try:
                await result
            except ParallelGenerationStopped:
                self.counters["interrupted"] += 1
                logger.info("%s model: cancelled parallel generation stopped on every rank", self.role)
            raise
        return images[0]

    async def refine(
        self, prompt: str, png: bytes, strength: float, width: int, height: int, steps: int, seed: int
    ) -> bytes:
        """img2img of a cached image at `strength` (= 1 - k/T); returns PNG bytes."""
        generator = self._local_generator()
        start = time.perf_counter()
        source = Image.open(io.BytesIO(png))
        image = await self._in_thread(
            generator.img2img, self._request(prompt, width, height, steps, seed), source, strength
        )
        self.metrics.observe("refine", time.perf_counter() - start)
        return png_bytes(image)

    async def generate_with_snapshots(
        self, prompt: str, width: int, height: int, steps: int, seed: int
    ) -> tuple[bytes, dict[int, np.ndarray]]:
        """NIRVANA's miss: full txt2img, plus the latents after each snapshot step (float16, for its cache)."""
        start = time.perf_counter()
        image, latents = await self._in_thread(
            self._local_generator().txt2img_with_snapshots,
            self._request(prompt, width, height, steps, seed),
            self.snapshot_steps,
        )
        self.metrics.observe("generate", time.perf_counter() - start)
        return png_bytes(image), {k: v.to(torch.float16).numpy() for k, v in latents.items()}

    async def resume(
        self, prompt: str, latents: np.ndarray, steps_done: int, width: int, height: int, steps: int, seed: int
    ) -> bytes:
        """NIRVANA's hit: the last steps - steps_done steps from cached latents."""
        start = time.perf_counter()
        generator = self._local_generator()
        cached = torch.from_numpy(np.asarray(latents)).to(generator.pipe.dtype)
        image = await self._in_thread(
            generator.resume, self._request(prompt, width, height, steps, seed), cached, steps_done
        )
        self.metrics.observe("resume", time.perf_counter() - start)
        return png_bytes(image)

    def _local_generator(self) -> DiffusionGenerator:
        if self.generator is None:  # the config schema keeps parallel models off these paths
            raise RuntimeError(f"the {self.role} model runs parallel inference, which does not refine or resume")
        return self.generator

    async def profile(self) -> float:
        """Seconds per full generation at the spec's default size and steps (MoDM profiles P = 60 / latency)."""
        async with self._profile_lock:
            if self._latency_s is None:
                req = self._request(
                    "a dog riding a bike",
                    self.spec.default_size,
                    self.spec.default_size,
                    self.spec.num_inference_steps,
                    0,
                )
                await self._txt2img(req)  # warm-up
                start = time.perf_counter()
                await self._txt2img(req)
                self._latency_s = time.perf_counter() - start
                logger.info("%s model profiled: %.3f s per full generation", self.role, self._latency_s)
            return self._latency_s

    async def _txt2img(self, req: GenerationRequest) -> Image.Image:
        if self.group is not None:
            return await self._generate_on_group(req)
        return await self._in_thread(self.generator.txt2img, req)

    async def _in_thread(self, run, *args) -> Image.Image:
        """Run a generation in a worker thread, which cancelling this coroutine does not stop. When Serve cancels
        the call (the client disconnected, so the router's request was cancelled and with it this child call), stop
        the pipeline at its next denoising step and keep this replica's slot until it has stopped, so that the
        next request does not share the device with an abandoned one."""
        control = StepControl()
        self.counters["generations"] += 1
        work = asyncio.ensure_future(asyncio.to_thread(run, *args, control))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            control.stop()
            try:
                await work
            except GenerationInterrupted:
                self.counters["interrupted"] += 1
                logger.info("%s model: cancelled generation stopped after %d steps", self.role, control.steps_run)
            raise
        finally:
            self.counters["denoising_steps"] += control.steps_run

    def stats(self) -> dict:
        """This replica's counters: generations started, generations stopped by a cancel, denoising steps run."""
        return {
            "generations": self.counters["generations"],
            "interrupted": self.counters["interrupted"],
            "denoising_steps": self.counters["denoising_steps"],
        }

    def placement(self) -> dict:
        """Placement-group ids of this replica and of its rank actors (None outside a placement group)."""

        def pg_id(worker) -> str | None:
            return ray.get_runtime_context().get_placement_group_id()

        ranks = [] if self.group is None else ray.get([w.__ray_call__.remote(pg_id) for w in self.group.workers])
        return {"replica": ray.get_runtime_context().get_placement_group_id(), "ranks": ranks}

    def info(self) -> dict:
        """What the router needs to validate requests before sending any work."""
        return {
            "role": self.role,
            "source": self.spec.source,
            "size_multiple": self._size_multiple,
            "default_size": self.spec.default_size,
            "max_size": self.spec.max_size,
            "num_inference_steps": self.spec.num_inference_steps,
        }

    def set_target_replicas(self, n: int) -> None:
        self._target_replicas = int(n)

    def record_autoscaling_stats(self) -> dict[str, float]:
        return {} if self._target_replicas is None else {TARGET_REPLICAS_METRIC: float(self._target_replicas)}

    def __del__(self):
        """Serve calls this when it stops the replica: the rank actors go with it (and so does the placement group,
        which Serve removes)."""
        group = getattr(self, "group", None)
        if group is not None:
            group.shutdown()
            self.group = None

    def check_health(self) -> None:
        if self.group is not None:
            self.group.check_health()  # raises when a rank died: Serve then restarts this replica
            return
        # Cheap: the pipeline is loaded and its device answers.
        torch.zeros(1, device=self.generator.device).add_(1)
