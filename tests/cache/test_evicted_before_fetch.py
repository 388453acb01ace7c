"""A cache entry evicted between the query that found it and the fetch of its image is served as a miss (issue 13),
not answered with 503. Driven through the cache's public API: the cache is filled to capacity after the query, so
FIFO evicts the matched entry before its image is fetched."""

import asyncio

from cache_testkit import DIM, add_seeded, make_config, unit_vector

from modm.cache import ImageCache
from modm.config import config_from_dict
from modm.roles import ModelRole
from modm.serving import Backends, ImageRequest, RequestPipeline
from modm.serving.services import ImageCacheService


def _fill_past_capacity(cache: ImageCache) -> None:
    for seed in range(100, 100 + cache.config.capacity):
        add_seeded(cache, seed)


def test_fetch_of_an_evicted_entry_is_none(tmp_path):
    with ImageCache(make_config(tmp_path / "c", capacity=2), DIM) as cache:
        service = ImageCacheService(cache)
        add_seeded(cache, 1)
        match = asyncio.run(service.query(unit_vector(1), ["alice"]))
        assert match is not None and asyncio.run(service.fetch_png(match.entry_id)) is not None
        _fill_past_capacity(cache)
        assert asyncio.run(service.fetch_png(match.entry_id)) is None


class _Embedder:
    async def embed_text(self, prompt):
        return unit_vector(1)  # the vector of entry 1: score 1.0, a hit at the top k


class _Pool:
    def __init__(self):
        self.calls = []

    async def info(self):
        return {"size_multiple": 8, "default_size": 64, "max_size": 64, "num_inference_steps": 50}

    async def profile(self):
        return 1.0

    async def generate(self, *args):
        self.calls.append("generate")
        return b"png"

    async def refine(self, prompt, png, *args):
        self.calls.append(("refine", png))
        return b"png"


class EvictingCache(ImageCacheService):
    """The real cache, with more admissions landing between the query and the fetch."""

    async def query(self, embedding, namespaces):
        found = await super().query(embedding, namespaces)
        _fill_past_capacity(self.cache)
        return found


def _serve(cache_service, tmp_path):
    config = config_from_dict(
        {
            "mode": "modm",
            "models": {"large": {"source": "l"}, "small": {"source": "s"}},
            "cache": {"directory": str(tmp_path / "unused"), "admission": "cache-large"},
            "policy": {"k_table": "minilm-text"},
        }
    )
    pools = {ModelRole.LARGE: _Pool(), ModelRole.SMALL: _Pool()}
    pipeline = RequestPipeline(config, Backends(models=pools, embedder=_Embedder(), cache=cache_service))

    async def scenario():
        await pipeline.start()
        served = await pipeline.generate(ImageRequest("prompt 1", tenant="alice"))
        return served, await pipeline.stats()

    served, stats = asyncio.run(scenario())
    return served.decision, stats, pools


def test_an_entry_evicted_before_fetch_is_served_as_a_miss(tmp_path):
    with ImageCache(make_config(tmp_path / "c", capacity=2), DIM) as cache:
        add_seeded(cache, 1)
        decision, stats, pools = _serve(EvictingCache(cache), tmp_path)
    assert not decision.hit and decision.k == 0 and decision.model is ModelRole.LARGE
    assert decision.score is not None and decision.score > 0.99  # the query did match
    assert stats["evicted_before_fetch"] == 1 and pools[ModelRole.LARGE].calls == ["generate"]


def test_a_hit_refines_the_fetched_image(tmp_path):
    with ImageCache(make_config(tmp_path / "c", capacity=4), DIM) as cache:
        add_seeded(cache, 1)
        decision, _, pools = _serve(ImageCacheService(cache), tmp_path)
        expected = cache.get_png(decision.entry_id)
    assert decision.hit and pools[ModelRole.SMALL].calls == [("refine", expected)]


def test_a_lookup_brings_the_image_only_for_a_match_at_or_over_min_score(tmp_path):
    with ImageCache(make_config(tmp_path / "c", capacity=4), DIM) as cache:
        service = ImageCacheService(cache)
        entry = add_seeded(cache, 1)
        hit = asyncio.run(service.lookup(unit_vector(1), ["alice"], min_score=0.99))
        assert hit.match.entry_id == entry.id and hit.png == cache.get_png(entry.id)
        below = asyncio.run(service.lookup(unit_vector(1), ["alice"], min_score=1.01))
        assert below.match.entry_id == entry.id and below.png is None
        assert asyncio.run(service.lookup(unit_vector(1), ["nobody"], min_score=0.0)).match is None
