"""MoDM through the pipeline: retrieval against cached images, k from the table, routing, refinement, admission."""

import pytest
from serving_kit import run
from serving_fakes import png_of, vector_at

from modm.roles import ModelRole
from modm.serving import ImageRequest

CAT = vector_at(1.0)
CAT_PAINTED = vector_at(0.96)  # minilm-text table: >= 0.95 -> k = 30
CAT_SKETCH = vector_at(0.85)  # >= 0.80 -> k = 15
DOG = vector_at(1.0, axis=3)
VECTORS = {"a cat": CAT, "a cat, painted": CAT_PAINTED, "a cat, sketch": CAT_SKETCH, "a dog": DOG}


def test_a_miss_goes_to_the_large_model_and_is_cached(modm_harness):
    h = modm_harness(VECTORS)

    async def scenario():
        await h.pipeline.start()
        served = await h.pipeline.generate(ImageRequest("a cat", seed=7))
        assert await h.pipeline.drain_admissions() == 1
        return served, await h.cache.stats()

    served, cache_stats = run(scenario())
    d = served.decision
    assert (d.hit, d.k, d.strength, d.model, d.entry_id) == (False, 0, 1.0, ModelRole.LARGE, None)
    assert h.large.calls == [("generate", "a cat", 64, 64, 50, 7)] and h.small.calls == []
    assert served.images == [png_of(7)]
    assert cache_stats["entries"] == 1
    assert set(d.timings_s) >= {"embed", "retrieve", "generate"}


@pytest.mark.parametrize("prompt, k", [("a cat, painted", 30), ("a cat, sketch", 15)])
def test_a_hit_refines_the_cached_image_on_the_small_model_at_its_k(modm_harness, prompt, k):
    h = modm_harness(VECTORS)

    async def scenario():
        await h.pipeline.start()
        first = await h.pipeline.generate(ImageRequest("a cat", seed=7))
        await h.pipeline.drain_admissions()
        return first, await h.pipeline.generate(ImageRequest(prompt, seed=8))

    _, served = run(scenario())
    d = served.decision
    assert d.hit and d.k == k and d.model is ModelRole.SMALL and d.strength == pytest.approx(1 - k / 50)
    assert d.entry_id == 0 and d.score == pytest.approx(CAT.dot(VECTORS[prompt]), abs=1e-5)
    assert h.small.calls == [("refine", prompt, round(1 - k / 50, 6), 64, 64, 50, 8)]


def test_quality_mode_sends_a_hit_to_an_idle_large_replica(modm_harness):
    h = modm_harness(VECTORS, monitor={"mode": "quality"})

    async def scenario():
        await h.pipeline.start()
        await h.pipeline.generate(ImageRequest("a cat"))
        await h.pipeline.drain_admissions()
        return await h.pipeline.generate(ImageRequest("a cat, painted"))

    served = run(scenario())
    assert served.decision.hit and served.decision.model is ModelRole.LARGE
    assert h.large.calls[-1][0] == "refine"


def test_an_unrelated_prompt_misses_and_the_admission_rule_is_applied(modm_harness):
    h = modm_harness(VECTORS, cache={"admission": "cache-large"})

    async def scenario():
        await h.pipeline.start()
        await h.pipeline.generate(ImageRequest("a cat"))
        await h.pipeline.drain_admissions()
        hit = await h.pipeline.generate(ImageRequest("a cat, painted"))
        await h.pipeline.drain_admissions()  # a refined hit is not admitted under cache-large
        miss = await h.pipeline.generate(ImageRequest("a dog"))
        await h.pipeline.drain_admissions()
        return hit, miss, await h.cache.stats()

    hit, miss, cache_stats = run(scenario())
    assert hit.decision.hit and not miss.decision.hit
    assert cache_stats["entries"] == 2  # the two large-model images, not the small model's refinement


def test_an_entry_evicted_before_its_image_is_fetched_is_served_as_a_miss(modm_harness):
    h = modm_harness(VECTORS)

    async def evicting_scenario():  # the query finds the entry, then its fetch finds it gone (FIFO at capacity)
        await h.pipeline.start()
        await h.pipeline.generate(ImageRequest("a cat"))
        await h.pipeline.drain_admissions()

        async def gone(entry_id):
            return None

        h.cache.fetch_png = gone
        return await h.pipeline.generate(ImageRequest("a cat, painted"))

    served = run(evicting_scenario())
    assert not served.decision.hit and served.decision.k == 0 and served.decision.model is ModelRole.LARGE
    assert served.decision.score == pytest.approx(0.96, abs=1e-5)  # the query did match
    assert run(h.pipeline.stats())["evicted_before_fetch"] == 1


def test_a_failed_retrieval_serves_a_miss_and_is_counted(modm_harness):
    h = modm_harness(VECTORS)
    h.embedder.fail = True

    async def scenario():
        await h.pipeline.start()
        return await h.pipeline.generate(ImageRequest("a cat"))

    served = run(scenario())
    assert not served.decision.hit and h.large.calls and h.metrics.events["retrieval_failed"] == 1


def test_n_images_use_consecutive_seeds_and_are_each_admitted(modm_harness):
    h = modm_harness(VECTORS)

    async def scenario():
        await h.pipeline.start()
        served = await h.pipeline.generate(ImageRequest("a cat", n=3, seed=10))
        await h.pipeline.drain_admissions()
        return served, await h.cache.stats()

    served, cache_stats = run(scenario())
    assert served.images == [png_of(10), png_of(11), png_of(12)]
    assert cache_stats["entries"] == 3


def test_cached_images_are_served_only_to_tenants_that_may_read_them(modm_harness):
    h = modm_harness(VECTORS)

    async def scenario():
        await h.pipeline.start()
        await h.pipeline.generate(ImageRequest("a cat", tenant="alice", seed=3))
        await h.pipeline.drain_admissions()
        own = await h.pipeline.cached_image(0, "alice")
        with pytest.raises(Exception) as foreign:
            await h.pipeline.cached_image(0, "bob")
        with pytest.raises(Exception) as unknown:
            await h.pipeline.cached_image(99, "alice")
        return own, foreign.value, unknown.value

    own, foreign, unknown = run(scenario())
    assert own == png_of(3)
    assert foreign.status == unknown.status == 404 and "no cached image" in foreign.message
