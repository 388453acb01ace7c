"""Two routers (pipelines) over the same model pools and one load board, under a skewed load: one router holds the
pool's requests, the other decides. With the board it admits and routes by the cluster's load; without (the
control), by its own counts, and gets it wrong."""

import asyncio
import time

import pytest
from serving_fakes import FakeEmbedder, FakeMonitor, FakePool, vector_at
from serving_kit import Harness, make_config, run

from modm.cache import ImageCache
from modm.policy.load_view import LoadBoard
from modm.roles import ModelRole
from modm.serving import ImageRequest
from modm.serving.errors import RequestRefused
from modm.serving.services import ImageCacheService


class BoardLink:
    """The LoadBoard deployment, in process."""

    def __init__(self):
        self.board = LoadBoard()

    async def report(self, router_id: str, in_flight: dict[str, int], ttl_s: float) -> dict[str, int]:
        return self.board.report(router_id, in_flight, ttl_s, time.monotonic())


async def held(h: Harness, prompts: list[str]) -> list[asyncio.Future]:
    """Requests sent to `h` and left waiting on the pool's gate."""
    futures = [asyncio.ensure_future(h.pipeline.generate(ImageRequest(p))) for p in prompts]
    await asyncio.sleep(0.01)
    return futures


@pytest.mark.parametrize("shared", [True, False], ids=["shared-view", "private-counts"])
def test_admission_control_counts_the_other_routers_requests(shared):
    # 10 s per request, one replica, bound 25 s: two requests fit in the cluster, whichever router sent them.
    config = make_config(
        "vanilla",
        models={"large": {"source": "fake/large", "profiled_latency_s": 10.0}},
        backpressure={"max_expected_latency_s": 25.0},
        monitor={"gpu_budget": 1, "min_small": 0},
    )
    pools = {ModelRole.LARGE: FakePool()}
    board = BoardLink() if shared else None
    busy, idle = (Harness(config, pools=pools, load_board=board) for _ in range(2))

    async def scenario():
        for h in (busy, idle):
            await h.pipeline.start()
        pools[ModelRole.LARGE].gate = asyncio.Event()
        first = await held(busy, ["a", "b"])
        if shared:
            await busy.pipeline.report_load()
            await idle.pipeline.report_load()
        outcome = asyncio.ensure_future(idle.pipeline.generate(ImageRequest("c")))
        await asyncio.sleep(0.01)
        view = (await idle.pipeline.stats())["queue_depths"]["large"]
        pools[ModelRole.LARGE].gate.set()
        await asyncio.gather(*first)
        try:
            await outcome
            return view, None
        except RequestRefused as err:
            return view, err

    view, refused = run(scenario())
    if shared:
        assert view == 2
        assert refused is not None and refused.status == 429 and refused.headers() == {"Retry-After": "10"}
    else:  # the idle router sees only its own request: a third one in a pool that holds two is let in
        assert view == 1 and refused is None


CAT, CAT_PAINTED, DOG = vector_at(1.0), vector_at(0.96), vector_at(1.0, axis=3)


@pytest.mark.parametrize("shared", [True, False], ids=["shared-view", "private-counts"])
def test_quality_mode_sends_a_hit_to_the_large_pool_only_when_the_cluster_leaves_a_replica_idle(tmp_path, shared):
    config = make_config("modm", tmp_path / "cache", monitor={"mode": "quality"})
    cache = ImageCache(config.cache, 8)
    embedder = FakeEmbedder({"a cat": CAT, "a cat, painted": CAT_PAINTED, "a dog": DOG})
    pools = {ModelRole.LARGE: FakePool(), ModelRole.SMALL: FakePool()}
    board = BoardLink() if shared else None
    busy, deciding = (
        Harness(
            config,
            embedder=embedder,
            cache=ImageCacheService(cache),
            monitor=FakeMonitor({"large": 1, "small": 1}),
            pools=pools,
            load_board=board,
        )
        for _ in range(2)
    )

    async def scenario():
        for h in (busy, deciding):
            await h.pipeline.start()
        await deciding.pipeline.generate(ImageRequest("a cat"))
        await deciding.pipeline.drain_admissions()
        pools[ModelRole.LARGE].gate = asyncio.Event()
        miss = await held(busy, ["a dog"])  # the one large replica is busy with the other router's miss
        if shared:
            await busy.pipeline.report_load()
            await deciding.pipeline.report_load()
        hit = asyncio.ensure_future(deciding.pipeline.generate(ImageRequest("a cat, painted")))
        await asyncio.sleep(0.01)
        pools[ModelRole.LARGE].gate.set()
        await asyncio.gather(*miss)
        return await hit

    try:
        served = run(scenario())
    finally:
        cache.close()
    assert served.decision.hit
    # Shared: the large replica is busy, the hit goes to the small pool. Private: the deciding router thinks the
    # large replica idle and queues the hit behind the other router's miss.
    assert served.decision.model is (ModelRole.SMALL if shared else ModelRole.LARGE)


def test_a_router_whose_board_is_unreachable_uses_its_own_counts():
    class DeadBoard:
        async def report(self, router_id, in_flight, ttl_s):
            raise ConnectionError("board gone")

    config = make_config("vanilla", monitor={"gpu_budget": 1, "min_small": 0})
    h = Harness(config, load_board=DeadBoard())

    async def scenario():
        await h.pipeline.start()
        await asyncio.sleep(0.01)  # the background report fails and is logged
        await h.pipeline.generate(ImageRequest("a"))
        return await h.pipeline.stats()

    stats = run(scenario())
    assert stats["requests"] == 1 and stats["router"]["peers_heard"] is False
