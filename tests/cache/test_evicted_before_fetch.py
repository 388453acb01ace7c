"""A cache entry evicted between the query that found it and the fetch of its image is served as a miss (issue 13),
not answered with 503. Driven through the cache's public API: the cache is filled to capacity after the query, so
FIFO evicts the matched entry before its image is fetched."""

import asyncio
from collections import Counter

from cache_testkit import DIM, add_seeded, make_config, unit_vector

from deployments.cache_index import CacheIndexServer
from deployments.router import Router
from modm.config import PolicyConfig
from modm.policy import KTable


class _Remote:
    """A handle method: `.remote(*args)` returns an awaitable of the plain call, as a Serve handle does."""

    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        async def call():
            return self.fn(*args)

        return call()


class _Handle:
    def __init__(self, target):
        self.target = target

    def __getattr__(self, name):
        return _Remote(getattr(self.target, name))


class _Embedder:
    def __init__(self, vector):
        self.vector = vector

    def embed_text(self, prompt):
        return self.vector


def _fill_past_capacity(server: CacheIndexServer, capacity: int) -> None:
    for seed in range(100, 100 + capacity):
        add_seeded(server.cache, seed)


def test_fetch_of_an_evicted_entry_is_none(tmp_path):
    server = CacheIndexServer(make_config(tmp_path / "c", capacity=2).model_dump(mode="json"), DIM)
    try:
        add_seeded(server.cache, 1)
        match = server.query(unit_vector(1), ["alice"])
        assert match is not None and server.fetch_png(match["entry_id"]) is not None
        _fill_past_capacity(server, 2)
        assert server.fetch_png(match["entry_id"]) is None
    finally:
        server.cache.close()


class _RetrievalStep:
    """The router's retrieval step on its own: no Serve, no models."""

    _retrieve = Router._retrieve
    _call_retrying = Router._call_retrying
    _count_retry = Router._count_retry
    _retry_if_replica_lost = staticmethod(Router._retry_if_replica_lost)


def _router_with(server: CacheIndexServer, vector) -> _RetrievalStep:
    router = _RetrievalStep()
    router.embedder = _Handle(_Embedder(vector))
    router.k_table = KTable.from_config(PolicyConfig())
    router.totals = Counter()

    class EvictingCache:
        """The real cache, with more admissions landing between the query and the fetch."""

        def query(self, embedding, namespaces):
            found = server.query(embedding, namespaces)
            _fill_past_capacity(server, server.cache.config.capacity)
            return found

        def fetch_png(self, entry_id):
            return server.fetch_png(entry_id)

    router.cache = _Handle(EvictingCache())
    return router


def test_router_serves_an_entry_evicted_before_fetch_as_a_miss(tmp_path):
    server = CacheIndexServer(make_config(tmp_path / "c", capacity=2).model_dump(mode="json"), DIM)
    try:
        add_seeded(server.cache, 1)
        router = _router_with(server, unit_vector(1))  # the same vector: score 1.0, a hit at the top k
        decision, _match = asyncio.run(router._retrieve("prompt 1", ["alice"], {}))
        assert not decision.hit and decision.k == 0
        assert decision.score is not None and decision.score > 0.99  # the query did match
        assert router.totals["evicted_before_fetch"] == 1
    finally:
        server.cache.close()


def test_router_hit_carries_the_fetched_image(tmp_path):
    server = CacheIndexServer(make_config(tmp_path / "c", capacity=4).model_dump(mode="json"), DIM)
    try:
        add_seeded(server.cache, 1)
        router = _router_with(server, unit_vector(1))
        router.cache = _Handle(server)  # no admissions in between
        decision, match = asyncio.run(router._retrieve("prompt 1", ["alice"], {}))
        assert decision.hit and match["png"] == server.cache.get_png(match["entry_id"])
    finally:
        server.cache.close()
