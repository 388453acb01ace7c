"""`StepBatchingGenerator`: the `Generator` of one `DiffusionGenerator` whose requests share denoiser passes.

Requests join and leave a running batch at step boundaries (continuous batching): each keeps its own prompt
embeddings, latents, scheduler copy, guidance and place in its schedule, so misses, refinements at different
strengths and NIRVANA resumes from different steps run their steps in the same forward passes, and each image
equals its unbatched generation through `DiffusionGenerator`. The SD3 and SDXL families are replayed
(`modm.generation.stepwise`); `unsupported(pipe)` says why another pipeline is not, and the caller then batches it
per request instead.

A caller cancels by cancelling its task: the request leaves the batch at the next step boundary and the call
returns (CancelledError) once it has left (`run_stoppable`), the others running on. A request is checked before it
joins, so a bad one fails alone; a pass that fails is run again one request at a time, so that only a request that
fails by itself gets the error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Callable

import torch
from PIL import Image

from modm.generation.generator import (
    DiffusionGenerator,
    GenerationRequest,
    check_resume,
    check_strength,
    sized_rgb,
)
from modm.generation.interface import GenerationCounters, Operation, run_stoppable
from modm.generation.step_costs import StepCosts
from modm.generation.steps import StepControl
from modm.generation.stepwise import family_class, unsupported_reason
from modm.generation.stepwise.engine import EngineClosedError, StepEngine
from modm.generation.stepwise.family import Job
from modm.policy.requests import InvalidRequestError

__all__ = ["EngineClosedError", "StepBatchingGenerator"]


class StepBatchingGenerator:
    operations = frozenset(Operation)

    def __init__(
        self,
        diffusion: DiffusionGenerator,
        *,
        max_batch_size: int,
        max_wait_s: float,
        on_pass: Callable[[int, float, int], None] | None = None,
    ):
        """Every denoiser pass (one step of `batch_size` requests) is reported to `self.costs` and, when given, to
        `on_pass(batch_size, seconds, denoising_steps)`; a pass's seconds include the requests' starts (text and
        image encoding) and decodes since the previous one, so that they add up to what the requests cost."""
        problem = self.unsupported(diffusion.pipe)
        if problem:
            raise ValueError(f"the {diffusion.name} model cannot be step-batched: {problem}")
        self.diffusion = diffusion
        self.name = diffusion.name
        self.size_multiple = diffusion.size_multiple
        self.device_description = f"{diffusion.device} (step batches of up to {max_batch_size})"
        self.counters = GenerationCounters()
        self.costs = StepCosts(max_batch_size)
        self._on_pass = on_pass
        self._family = family_class(diffusion.pipe)(diffusion)
        self._engine = StepEngine(
            self._family, name=self.name, max_batch_size=max_batch_size, max_wait_s=max_wait_s, on_pass=self._observe
        )

    def _observe(self, batch_size: int, seconds: float, steps: int) -> None:
        self.costs.observe(batch_size, seconds, steps)
        if self._on_pass is not None:
            self._on_pass(batch_size, seconds, steps)

    @staticmethod
    def unsupported(pipe) -> str | None:
        """Why this pipeline's family cannot be step-batched, or None."""
        return unsupported_reason(pipe)

    def check_operations(self, operations: Iterable[Operation]) -> None:
        operations = set(operations)
        if Operation.IMG2IMG in operations:
            self._family.refine_pipe()  # builds the img2img twin, or raises ModelLoadError
        if operations & {Operation.SNAPSHOTS, Operation.RESUME}:
            self.diffusion.check_resumable()

    # ------------------------------------------------------------------------------------------- operations
    async def txt2img(self, req: GenerationRequest) -> Image.Image:
        self.diffusion.check_request(req)
        return await self._run(Operation.TXT2IMG, req)

    async def img2img(self, req: GenerationRequest, image: Image.Image, strength: float) -> Image.Image:
        self.diffusion.check_request(req)
        check_strength(strength)
        if not isinstance(image, Image.Image):
            raise InvalidRequestError(f"img2img needs a PIL image, got {type(image).__name__}")
        image = sized_rgb(image, req.width, req.height)
        return await self._run(Operation.IMG2IMG, req, image=image, strength=float(strength))

    async def txt2img_with_snapshots(
        self, req: GenerationRequest, snapshot_steps: tuple[int, ...]
    ) -> tuple[Image.Image, dict[int, torch.Tensor]]:
        self.diffusion.check_request(req)
        snapshot_steps = tuple(snapshot_steps)
        outside = [s for s in snapshot_steps if not 0 < s < req.steps]
        if outside or not snapshot_steps:
            raise InvalidRequestError(f"snapshot steps {outside or []} are not inside a {req.steps}-step run")
        return await self._run(Operation.SNAPSHOTS, req, snapshot_steps=snapshot_steps)

    async def resume(self, req: GenerationRequest, latents: torch.Tensor, steps_done: int) -> Image.Image:
        self.diffusion.check_request(req)
        if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
            raise InvalidRequestError(f"resume needs float latents, got {getattr(latents, 'dtype', type(latents))}")
        check_resume(latents, steps_done, req.steps)
        if not torch.isfinite(latents).all():
            raise InvalidRequestError("latents hold NaN or infinite values")
        # Its rows join other requests' in one denoiser input: the shape must be exactly one image's.
        expected = self._family.latent_shape(req.height, req.width)
        if tuple(latents.shape) != expected:
            raise InvalidRequestError(
                f"latents of shape {tuple(latents.shape)} are not one {req.width}x{req.height} image's {expected}"
            )
        return await self._run(Operation.RESUME, req, latents=latents, steps_done=steps_done)

    async def _run(self, operation: Operation, req: GenerationRequest, **inputs):
        control = StepControl(on_stop=self._engine.wake)
        future: Future = Future()
        self._engine.submit(Job(operation, req, control, future, **inputs))
        return await run_stoppable(asyncio.wrap_future(future), control, self.counters, name=self.name)

    # ------------------------------------------------------------------------------------------- health
    def check_health(self) -> None:
        """The engine still runs and the device answers."""
        if not self._engine.alive():
            raise RuntimeError(f"the {self.name} model's step-batching engine has stopped")
        torch.zeros(1, device=self.diffusion.device).add_(1)

    def close(self) -> None:
        """Stop the engine; requests still in it fail with EngineClosedError, later ones raise it. Safe twice."""
        self._engine.close()
