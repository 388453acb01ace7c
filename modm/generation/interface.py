"""`Generator`: what a model service needs from whatever runs its diffusion model, in this process or elsewhere.

Implementations: `LocalGenerator` (one pipeline in this process, `modm.generation.local`) and the actor-group one of
the Ray deployments (`deployments.actor_group.ActorGroupGenerator`: one model over several devices). Each operation
is async, takes a request object and returns an image; the caller cancels by cancelling the awaiting task, after
which the generation stops at its next denoising step and the call returns only once it has stopped
(`run_stoppable`, shared by every implementation), so the device is free when the caller's slot is.

A `typing.Protocol`, not a base class: callers depend on the shape only, and implementations share behaviour by
composition (`run_stoppable`, `GenerationCounters`), so an engine that wraps other generators, a remote one and a
test's fake each implement it without inheriting anything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterable
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Protocol, TypeVar

import torch
from PIL import Image

from modm.generation.generator import GenerationRequest
from modm.generation.step_costs import StepCosts
from modm.generation.steps import GenerationInterrupted, StepControl

__all__ = [
    "GenerationCounters",
    "Generator",
    "Operation",
    "UnsupportedOperationError",
    "run_stoppable",
    "unsupported_operation",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Operation(str, Enum):
    TXT2IMG = "txt2img"  # a full generation from noise
    IMG2IMG = "img2img"  # refine an image at a strength (MoDM's cache hits)
    SNAPSHOTS = "txt2img_with_snapshots"  # a full generation that also returns latents part-way (NIRVANA's misses)
    RESUME = "resume"  # the tail of a run from its latents part-way (NIRVANA's hits)


class UnsupportedOperationError(RuntimeError):
    """The generator's method cannot run this operation at all (a parallel group only generates from noise)."""


def unsupported_operation(
    generator_name: str, how: str, supported: frozenset[Operation], missing: Iterable[Operation]
) -> UnsupportedOperationError:
    """The error for operations outside `supported`, naming the model, how it runs and what it can do."""
    can = ", ".join(sorted(op.value for op in supported))
    cannot = ", ".join(sorted(op.value for op in missing))
    return UnsupportedOperationError(f"the {generator_name} model runs {how}, which does not do {cannot} (only {can})")


@dataclass
class GenerationCounters:
    """What one generator ran: generations started, generations stopped by a cancel, denoising steps run."""

    generations: int = 0
    interrupted: int = 0
    denoising_steps: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Generator(Protocol):
    name: str  # the model's role ("large" or "small"), for errors and logs
    size_multiple: int  # image sides must be a multiple of this
    operations: frozenset[Operation]  # what this implementation runs
    device_description: str  # where it runs, for logs ("cuda:0", "distrifusion x2 on ['cuda:0', 'cuda:0']")
    counters: GenerationCounters
    costs: StepCosts  # seconds per image-step at each batch size run, for the replica's capacity

    def check_operations(self, operations: Iterable[Operation]) -> None:
        """Raise a clear error unless this model can run every one of `operations`; load now what they need (so a
        model that cannot serve its role fails at start-up, not at its first request)."""
        ...

    async def txt2img(self, req: GenerationRequest) -> Image.Image: ...

    async def img2img(self, req: GenerationRequest, image: Image.Image, strength: float) -> Image.Image: ...

    async def txt2img_with_snapshots(
        self, req: GenerationRequest, snapshot_steps: tuple[int, ...]
    ) -> tuple[Image.Image, dict[int, torch.Tensor]]:
        """Also returns the latents (CPU) after each step count in snapshot_steps."""
        ...

    async def resume(self, req: GenerationRequest, latents: torch.Tensor, steps_done: int) -> Image.Image: ...

    def check_health(self) -> None:
        """Raise if the device (or a rank) no longer answers."""
        ...

    def close(self) -> None:
        """Release what the generator holds beyond this process (rank actors); safe to call twice."""
        ...


async def run_stoppable(
    work: Awaitable[T],
    control: StepControl,
    counters: GenerationCounters,
    *,
    name: str,
    costs: StepCosts | None = None,
) -> T:
    """Await `work`, one generation driven by `control`, counting it in `counters` (and its cost, as a batch of one,
    in `costs`).

    When the awaiting task is cancelled (e.g. the client went away), stop the generation at its next denoising step
    and return (raising CancelledError) only once it has stopped, so the next request does not share the device with
    an abandoned one; a second cancel while waiting does not shorten that wait.
    """
    counters.generations += 1
    start = time.perf_counter()
    task = asyncio.ensure_future(work)
    try:
        result = await asyncio.shield(task)
        if costs is not None:
            costs.observe(1, time.perf_counter() - start, control.steps_run)
        return result
    except asyncio.CancelledError:
        control.stop()
        while not task.done():
            try:
                await asyncio.shield(task)
            except (asyncio.CancelledError, Exception):  # its outcome is read below; a new cancel must not end the wait
                pass
        _record_cancelled(task, control, counters, name)
        raise
    finally:
        counters.denoising_steps += control.steps_run


def _record_cancelled(task: asyncio.Future, control: StepControl, counters: GenerationCounters, name: str) -> None:
    error = None if task.cancelled() else task.exception()
    if isinstance(error, GenerationInterrupted):
        counters.interrupted += 1
        logger.info("%s model: cancelled generation stopped after %d denoising steps", name, control.steps_run)
    elif error is not None:
        logger.warning("%s model: a cancelled generation failed: %r", name, error)
