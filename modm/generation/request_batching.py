"""`RequestBatchingGenerator`: the `Generator` that runs compatible requests as one pipeline call.

Requests queue in the replica; one dispatcher task takes the oldest, waits up to `max_wait_s` (from that request's
arrival, so requests that queued behind a running batch start at once) for up to `max_batch_size` requests with the
same operation and `batch_key` (size, steps, guidance; a refinement's strength, a resume's step, a snapshot run's
steps), and runs them as one call of the pipeline with one seeded generator per request
(`DiffusionGenerator.*_batch`), so that every image is the one its request would get alone. One batch runs at a time:
a diffusers pipeline is not re-entrant.

A request is checked before it joins, so a bad one fails alone. A batch that fails for any other reason is run again
one request at a time, so that only the request that caused it gets the error. A caller that cancels leaves at once;
its batch stops at the next denoising step when every one of its requests has left, and runs on for the others
otherwise (their images do not depend on it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from modm.generation.generator import (
    DiffusionGenerator,
    GenerationRequest,
    batch_key,
    check_resume,
    check_strength,
)
from modm.generation.interface import GenerationCounters, Operation
from modm.generation.local import LocalGenerator
from modm.generation.step_costs import StepCosts
from modm.generation.steps import GenerationInterrupted, StepControl
from modm.policy.requests import InvalidRequestError

__all__ = ["RequestBatchingGenerator"]

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Member:
    """One request waiting for, or running in, a batch."""

    operation: Operation
    key: tuple  # requests with equal keys share a call
    request: GenerationRequest
    payload: Any  # the image to refine, the latents to resume from, or the snapshot steps
    future: asyncio.Future
    arrived: float
    left: bool = False  # its caller cancelled


class _BatchControl(StepControl):
    """Stops the batch's pipeline call once every member has left."""

    def __init__(self, members: Sequence[_Member]):
        super().__init__()
        self.members = members

    def should_stop(self) -> bool:
        return all(member.left for member in self.members)


class RequestBatchingGenerator:
    operations = frozenset(Operation)

    def __init__(
        self,
        diffusion: DiffusionGenerator,
        *,
        max_batch_size: int,
        max_wait_s: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be non-negative, got {max_wait_s}")
        cache = diffusion.feature_cache
        if cache is not None and not cache.batch_invariant and max_batch_size > 1:
            # This hook decides skip or compute once per forward from the whole batch: the model runs its requests
            # one per pipeline call (modm.generation.feature_cache).
            logger.info(
                "%s model: %s cache on, so request batches are of one request", diffusion.name, cache.kind.value
            )
            max_batch_size = 1
        self.diffusion = diffusion
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.name = diffusion.name
        self.size_multiple = diffusion.size_multiple
        self.device_description = f"{diffusion.device} (request batches of up to {max_batch_size})"
        self.counters = GenerationCounters()
        self.costs = StepCosts(max_batch_size)
        self._clock = clock
        self._queue: list[_Member] = []
        self._arrival = asyncio.Event()
        self._dispatcher: asyncio.Task | None = None
        self._closed = False
        self._checks = LocalGenerator(diffusion)  # check_operations and check_health are the unbatched ones

    # ------------------------------------------------------------------------------------------ the Generator API
    def check_operations(self, operations: Iterable[Operation]) -> None:
        self._checks.check_operations(operations)

    def check_health(self) -> None:
        self._checks.check_health()

    async def txt2img(self, req: GenerationRequest) -> Image.Image:
        self.diffusion.check_request(req)
        return await self._join(Operation.TXT2IMG, (batch_key(req),), req, None)

    async def img2img(self, req: GenerationRequest, image: Image.Image, strength: float) -> Image.Image:
        self.diffusion.check_request(req)
        check_strength(strength)
        return await self._join(Operation.IMG2IMG, (batch_key(req), strength), req, image)

    async def txt2img_with_snapshots(
        self, req: GenerationRequest, snapshot_steps: tuple[int, ...]
    ) -> tuple[Image.Image, dict[int, torch.Tensor]]:
        self.diffusion.check_request(req)
        snapshot_steps = tuple(sorted(set(snapshot_steps)))
        outside = [s for s in snapshot_steps if not 0 < s < req.steps]
        if outside:
            raise InvalidRequestError(f"snapshot steps {outside} are not inside a {req.steps}-step run")
        return await self._join(Operation.SNAPSHOTS, (batch_key(req), snapshot_steps), req, snapshot_steps)

    async def resume(self, req: GenerationRequest, latents: torch.Tensor, steps_done: int) -> Image.Image:
        self.diffusion.check_request(req)
        check_resume(latents, steps_done, req.steps)
        key = (batch_key(req), steps_done, tuple(latents.shape), latents.dtype)
        return await self._join(Operation.RESUME, key, req, latents)

    def close(self) -> None:
        """Refuse new requests and fail the queued ones; a running batch finishes."""
        self._closed = True
        for member in self._queue:
            if not member.future.done():
                member.future.set_exception(RuntimeError(f"the {self.name} model is shutting down"))
        self._queue.clear()

    # ----------------------------------------------------------------------------------------------- batching
    async def _join(self, operation: Operation, key: tuple, request: GenerationRequest, payload: Any) -> Any:
        if self._closed:
            raise RuntimeError(f"the {self.name} model is shutting down")
        loop = asyncio.get_running_loop()
        member = _Member(operation, (operation, *key), request, payload, loop.create_future(), self._clock())
        self._queue.append(member)
        self.counters.generations += 1
        dispatcher = self._dispatcher
        if dispatcher is None or dispatcher.done() or dispatcher.get_loop() is not loop:
            # Also when the loop that ran the last dispatcher has gone (one asyncio.run after another): its waiting
            # requests went with it.
            self._queue = [m for m in self._queue if m.future.get_loop() is loop]
            self._arrival = asyncio.Event()
            self._dispatcher = loop.create_task(self._dispatch())
        self._arrival.set()
        try:
            return await asyncio.shield(member.future)
        except asyncio.CancelledError:
            self._leave(member)
            raise

    def _leave(self, member: _Member) -> None:
        """The caller cancelled: out of the queue, or out of its running batch (whose call stops when it empties)."""
        member.left = True
        if member in self._queue:
            self._queue.remove(member)
        else:
            self.counters.interrupted += 1
            logger.info("%s model: a request left its batch (cancelled)", self.name)
        if not member.future.done():
            member.future.cancel()
        self._arrival.set()  # a dispatcher waiting for company behind it looks again

    async def _dispatch(self) -> None:
        while self._queue:
            batch = await self._next_batch()
            if batch:
                await self._run(batch)

    async def _next_batch(self) -> list[_Member]:
        """The oldest request and the compatible ones behind it, once the batch is full or the oldest has waited
        max_wait_s."""
        head = self._queue[0]
        while True:
            batch = [m for m in self._queue if m.key == head.key][: self.max_batch_size]
            remaining = head.arrived + self.max_wait_s - self._clock()
            if len(batch) >= self.max_batch_size or remaining <= 0:
                break
            self._arrival.clear()
            try:
                await asyncio.wait_for(self._arrival.wait(), remaining)
            except TimeoutError:
                pass
            if head not in self._queue:  # it left while waiting: start over from the new oldest
                return []
        for member in batch:
            self._queue.remove(member)
        return batch

    async def _run(self, batch: list[_Member]) -> None:
        control = _BatchControl(batch)
        start = time.perf_counter()
        try:
            results = await asyncio.to_thread(self._call, batch, control)
        except GenerationInterrupted:
            return  # every member left; none waits for an answer
        except Exception as err:
            if len(batch) > 1:
                logger.warning(
                    "%s model: a batch of %d failed (%r); running its requests one by one", self.name, len(batch), err
                )
                for member in batch:
                    if not member.left:
                        await self._run([member])
                return
            _settle(batch[0], error=err)
            return
        finally:
            self.counters.denoising_steps += control.steps_run * len(batch)
        self.costs.observe(len(batch), time.perf_counter() - start, control.steps_run)
        for member, result in zip(batch, results, strict=True):
            _settle(member, result=result)

    def _call(self, batch: list[_Member], control: StepControl) -> list:
        """One pipeline call for the batch (in the worker thread)."""
        first = batch[0]
        requests = [m.request for m in batch]
        diffusion = self.diffusion
        if first.operation is Operation.TXT2IMG:
            return diffusion.txt2img_batch(requests, control)
        if first.operation is Operation.IMG2IMG:
            strength = first.key[2]
            return diffusion.img2img_batch(requests, [m.payload for m in batch], strength, control)
        if first.operation is Operation.SNAPSHOTS:
            return diffusion.txt2img_with_snapshots_batch(requests, first.payload, control)
        steps_done = first.key[2]
        return diffusion.resume_batch(requests, [m.payload for m in batch], steps_done, control)


def _settle(member: _Member, *, result: Any = None, error: BaseException | None = None) -> None:
    if member.future.done():  # its caller left
        return
    if error is not None:
        member.future.set_exception(error)
    else:
        member.future.set_result(result)
