"""How the pipeline calls its backends: one retry when the replica that took a call was lost, and a bounded set of
background tasks for the work that follows a response (cache admissions)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from modm.serving.errors import ReplicaLost

logger = logging.getLogger(__name__)

T = TypeVar("T")
# How strategies and delivery call a backend: (call, what) -> its result, retried once if the replica was lost.
Call = Callable[[Callable[[], Awaitable[Any]], str], Awaitable[Any]]

__all__ = ["BackgroundWork", "Call", "retry_if_replica_lost"]


async def retry_if_replica_lost(
    call: Callable[[], Awaitable[T]], what: str, on_retry: Callable[[], None] | None = None
) -> T:
    """Await `call()`; if the replica that took it was lost, call once more.

    Every call made through this is idempotent (generation is deterministic given the seed; reading a cached image
    has no side effect), and the transport routes the second attempt to another replica (or holds it until the
    replacement is up), so a replica death costs latency, not the request. Only the loss of the replica is retried:
    a replica that answered with an error would only repeat it.
    """
    try:
        return await call()
    except ReplicaLost as err:
        logger.warning("a %s replica was lost mid-request (%s); retrying once", what, err)
    if on_retry is not None:
        on_retry()
    return await call()


class BackgroundWork:
    """Coroutines run after the response; beyond `limit` at once a new one is dropped (closed), never queued, so a
    slow cache cannot grow the router's memory without bound."""

    def __init__(self, limit: int, on_dropped: Callable[[], None]):
        self.limit = limit
        self._on_dropped = on_dropped
        self._tasks: set[asyncio.Task] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def submit(self, work: Coroutine, what: str) -> bool:
        """Start `work` unless the bound is reached; a failure of it is logged (the response was already sent)."""
        if len(self._tasks) >= self.limit:
            work.close()
            self._on_dropped()
            return False
        task = asyncio.get_running_loop().create_task(self._logged(work, what))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    @staticmethod
    async def _logged(work: Coroutine, what: str) -> None:
        try:
            await work
        except Exception:
            logger.exception("%s failed (the response was already sent)", what)

    async def drain(self) -> int:
        """Wait for the work in flight; returns how much there was."""
        pending = list(self._tasks)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        return len(pending)
