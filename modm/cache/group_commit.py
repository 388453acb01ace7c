"""Group commit: concurrent callers' items written by one commit (one fsync) instead of one commit each.

A caller queues its item; if no commit is running it becomes the leader and commits everything queued, otherwise it
waits for the running commit to finish and then either has its answer (its item was in it) or leads the next one.
So a burst of N concurrent admissions costs about two commits, not N, and each caller still returns only once its
own item is durable. A commit that fails is retried item by item, so a bad item fails alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Slot(Generic[Item, Result]):
    __slots__ = ("item", "done", "result", "error")

    def __init__(self, item: Item):
        self.item = item
        self.done = False
        self.result: Result | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[Item, Result]):
    """`submit(item)` returns `commit([..., item, ...])`'s result for `item`, batching concurrent submits.

    `commit` takes a list of items and returns one result per item, in order (all or nothing: it raises, or every
    item is committed); `max_batch` bounds one commit.
    """

    def __init__(self, commit: Callable[[Sequence[Item]], Sequence[Result]], *, max_batch: int = 256):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._commit = commit
        self._max_batch = max_batch
        self._cond = threading.Condition()
        self._queue: list[_Slot] = []
        self._committing = False
        self.commits = 0  # commit calls made (group commits and the item-by-item retries)

    def submit(self, item: Item) -> Result:
        slot = _Slot(item)
        with self._cond:
            self._queue.append(slot)
        while True:
            with self._cond:
                while self._committing and not slot.done:
                    self._cond.wait()
                if slot.done:
                    break
                # No commit running and ours not committed yet: lead the next one (the oldest items first, so
                # ours is in it or in the one after).
                self._committing = True
                batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self._committing = False
                    self._cond.notify_all()
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _run(self, batch: list[_Slot]) -> None:
        try:
            self._settle(batch, self._commit_counted([s.item for s in batch]))
        except BaseException as err:
            if len(batch) == 1:
                self._fail(batch[0], err)
                return
            for slot in batch:  # find the culprit: each item alone
                try:
                    self._settle([slot], self._commit_counted([slot.item]))
                except BaseException as one:
                    self._fail(slot, one)

    def _commit_counted(self, items: list) -> Sequence:
        self.commits += 1
        results = self._commit(items)
        if len(results) != len(items):
            raise RuntimeError(f"commit returned {len(results)} results for {len(items)} items")
        return results

    def _settle(self, batch: list[_Slot], results: Sequence) -> None:
        with self._cond:
            for slot, result in zip(batch, results):
                slot.result, slot.done = result, True

    def _fail(self, slot: _Slot, error: BaseException) -> None:
        with self._cond:
            slot.error, slot.done = error, True
