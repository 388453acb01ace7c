"""Batching without a wait (modm.serving.coalescing): a lone call runs at once, calls that arrive while a batch runs
share the next one, a bad item fails only its own call, and a cancelled caller costs the others nothing."""

import asyncio

import pytest

from modm.serving.coalescing import Coalescer


class Doubler:
    """A batch call that records its batches and, when `gate` is set, holds each batch until the test releases it."""

    def __init__(self, hold: bool = False):
        self.batches: list[list] = []
        self.gate = asyncio.Event() if hold else None

    async def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        if self.gate is not None:
            await self.gate.wait()
            self.gate.clear()
        if any(item == "bad" for item in items):
            raise ValueError("bad item")
        return [2 * item for item in items]


def test_a_lone_call_runs_at_once_as_a_batch_of_one():
    async def scenario():
        doubler = Doubler()
        coalescer = Coalescer(doubler, max_batch=8)
        # No timer can fire under wait_for(0.05) if the call waited for company: it must finish at once.
        result = await asyncio.wait_for(coalescer.submit(21), timeout=0.05)
        return result, doubler.batches

    assert asyncio.run(scenario()) == (42, [[21]])


def test_calls_arriving_during_a_batch_share_the_next_one_up_to_max_batch():
    async def scenario():
        doubler = Doubler(hold=True)
        coalescer = Coalescer(doubler, max_batch=3)
        first = asyncio.ensure_future(coalescer.submit(1))
        await asyncio.sleep(0)  # the first batch starts and is held
        later = [asyncio.ensure_future(coalescer.submit(n)) for n in range(2, 7)]
        await asyncio.sleep(0)
        for _ in range(3):  # release the held batches one by one
            doubler.gate.set()
            await asyncio.sleep(0.01)
        return await asyncio.gather(first, *later), doubler.batches

    results, batches = asyncio.run(scenario())
    assert results == [2, 4, 6, 8, 10, 12]
    assert batches == [[1], [2, 3, 4], [5, 6]]


def test_a_bad_item_fails_only_its_own_call():
    async def scenario():
        doubler = Doubler(hold=True)
        coalescer = Coalescer(doubler, max_batch=8)
        first = asyncio.ensure_future(coalescer.submit(1))
        await asyncio.sleep(0)
        calls = [asyncio.ensure_future(coalescer.submit(x)) for x in (2, "bad", 3)]
        await asyncio.sleep(0)
        doubler.gate.set()  # the first batch
        await asyncio.sleep(0.01)
        held, doubler.gate = doubler.gate, None  # the retries of the shared batch's items run unheld
        held.set()  # the shared batch
        return await asyncio.gather(first, *calls, return_exceptions=True), doubler.batches

    results, batches = asyncio.run(scenario())
    assert results[:2] == [2, 4] and results[3] == 6
    assert isinstance(results[2], ValueError)
    assert batches == [[1], [2, "bad", 3], [2], ["bad"], [3]]


def test_a_cancelled_caller_leaves_the_batch_and_the_others_get_their_results():
    async def scenario():
        doubler = Doubler(hold=True)
        coalescer = Coalescer(doubler, max_batch=8)
        first = asyncio.ensure_future(coalescer.submit(1))
        await asyncio.sleep(0)
        gone, kept = asyncio.ensure_future(coalescer.submit(2)), asyncio.ensure_future(coalescer.submit(3))
        await asyncio.sleep(0)
        gone.cancel()
        doubler.gate.set()
        await asyncio.sleep(0.01)
        doubler.gate.set()
        return await first, await kept, gone.cancelled(), doubler.batches

    assert asyncio.run(scenario()) == (2, 6, True, [[1], [3]])


def test_a_batch_call_that_returns_the_wrong_count_fails_its_calls_with_a_reason():
    async def short(items):
        return items[:-1]

    async def scenario():
        return await Coalescer(short, max_batch=4).submit(1)

    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        asyncio.run(scenario())


def test_max_batch_must_be_positive():
    with pytest.raises(ValueError, match="max_batch"):
        Coalescer(Doubler(), max_batch=0)


class ThreadRecordingEmbedder:
    dim = 2

    def __init__(self):
        self.passes: list[tuple[list[str], int]] = []

    def embed_text(self, prompts):
        import threading

        import numpy as np

        self.passes.append((list(prompts), threading.get_ident()))
        return np.ones((len(prompts), self.dim), np.float32)


def test_the_embedder_service_shares_a_pass_among_concurrent_prompts_off_the_loop():
    import threading

    from modm.serving.services import EmbedderService

    embedder = ThreadRecordingEmbedder()
    service = EmbedderService(embedder, max_batch=8)

    async def scenario():
        return await asyncio.gather(*[service.embed_text(p) for p in ("a", "b", "c")])

    vectors = asyncio.run(scenario())
    assert [v.shape for v in vectors] == [(2,)] * 3
    assert [prompts for prompts, _ in embedder.passes] == [["a", "b", "c"]]  # arrived together: one pass
    assert all(thread != threading.get_ident() for _, thread in embedder.passes)  # the loop stays free
