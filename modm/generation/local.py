"""`LocalGenerator`: the `Generator` of one `DiffusionGenerator` in this process.

Each generation runs in a worker thread (the pipeline call blocks), driven by a `StepControl` that `run_stoppable`
stops when the awaiting task is cancelled: cancelling a coroutine does not stop a thread, a step callback does.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from typing import Callable

import torch
from PIL import Image

from modm.config.schema import ModelSpec
from modm.generation.generator import DiffusionGenerator, GenerationRequest
from modm.generation.interface import GenerationCounters, Operation, run_stoppable
from modm.generation.step_costs import StepCosts
from modm.generation.steps import StepControl

__all__ = ["LocalGenerator"]


class LocalGenerator:
    operations = frozenset(Operation)

    def __init__(self, diffusion: DiffusionGenerator):
        self.diffusion = diffusion
        self.name = diffusion.name
        self.size_multiple = diffusion.size_multiple
        self.device_description = str(diffusion.device)
        self.counters = GenerationCounters()
        self.costs = StepCosts()
        # A diffusers pipeline is not re-entrant (its scheduler keeps the step index): one generation at a time.
        # A thread lock, taken in the worker thread, so that a call cancelled while it waits stops at its first step.
        self._pipeline_free = threading.Lock()

    @classmethod
    def from_spec(cls, spec: ModelSpec, name: str, *, device: torch.device | None = None) -> "LocalGenerator":
        return cls(DiffusionGenerator.from_spec(spec, name, device=device))

    def check_operations(self, operations: Iterable[Operation]) -> None:
        operations = set(operations)
        if Operation.IMG2IMG in operations:
            self.diffusion.refine_pipe  # noqa: B018 -- builds the img2img twin, or raises ModelLoadError
        if operations & {Operation.SNAPSHOTS, Operation.RESUME}:
            self.diffusion.check_resumable()

    async def txt2img(self, req: GenerationRequest) -> Image.Image:
        return await self._in_thread(self.diffusion.txt2img, req)

    async def img2img(self, req: GenerationRequest, image: Image.Image, strength: float) -> Image.Image:
        return await self._in_thread(self.diffusion.img2img, req, image, strength)

    async def txt2img_with_snapshots(
        self, req: GenerationRequest, snapshot_steps: tuple[int, ...]
    ) -> tuple[Image.Image, dict[int, torch.Tensor]]:
        return await self._in_thread(self.diffusion.txt2img_with_snapshots, req, tuple(snapshot_steps))

    async def resume(self, req: GenerationRequest, latents: torch.Tensor, steps_done: int) -> Image.Image:
        return await self._in_thread(self.diffusion.resume, req, latents, steps_done)

    async def _in_thread(self, run: Callable, *args):
        control = StepControl()
        work = asyncio.to_thread(self._one_at_a_time, run, *args, control)
        return await run_stoppable(work, control, self.counters, name=self.name, costs=self.costs)

    def _one_at_a_time(self, run: Callable, *args):
        with self._pipeline_free:
            return run(*args)

    def check_health(self) -> None:
        """Cheap: the pipeline is loaded and its device answers."""
        torch.zeros(1, device=self.diffusion.device).add_(1)

    def close(self) -> None:
        """Nothing outside this process to release."""
