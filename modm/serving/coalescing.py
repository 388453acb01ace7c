"""Batching without a wait: concurrent calls share one batch call, and a lone call runs at once.

Serve's `serve.batch` holds the first request of every batch for `batch_wait_timeout_s` so that others can join:
at low load that wait is pure latency, and with a zero wait it starts every request as its own batch. Here at most
one batch runs at a time; the calls that arrive while it runs become the next batch (up to `max_batch`), so batches
grow with the load and an idle service answers a call with no added delay.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["Coalescer"]

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    def __init__(self, run_batch: Callable[[list[T]], Awaitable[Sequence[R]]], max_batch: int):
        """`run_batch(items)` returns one result per item, in order. When it raises for a batch of several, each
        item is run alone, so an exception reaches only the calls whose own item raises it."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._run_batch, self.max_batch = run_batch, max_batch
        self._waiting: list[tuple[T, asyncio.Future]] = []
        self._drainer: asyncio.Task | None = None  # the task running batches while calls wait; None when idle

    async def submit(self, item: T) -> R:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._drainer is None:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
                batch = [(item, future) for item, future in batch if not future.cancelled()]
                if batch:
                    await self._run(batch)
        finally:
            self._drainer = None
            for _, future in self._waiting:  # only when the drainer itself was cancelled (the loop is closing)
                future.cancel()
            self._waiting = []

    async def _run(self, batch: list[tuple[T, asyncio.Future]]) -> None:
        try:
            results = list(await self._run_batch([item for item, _ in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"the batch call returned {len(results)} results for {len(batch)} items")
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as err:
            if len(batch) > 1:  # one bad item must not fail the others: run each alone, so only it fails
                for one in batch:
                    await self._run([one])
                return
            _, future = batch[0]
            if not future.done():
                future.set_exception(err)
            return
        for (_, future), result in zip(batch, results):
            if not future.done():  # a caller that went away (cancelled) takes no result
                future.set_result(result)
