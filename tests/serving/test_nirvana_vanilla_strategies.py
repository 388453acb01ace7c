"""NIRVANA and vanilla through the pipeline, and the cache warm-up, with fake backends."""

import pytest
from serving_kit import Harness, make_config, run
from serving_fakes import FakeEmbedder, FakeLatentCache, png_of, vector_at

from modm.roles import ModelRole
from modm.serving import ImageRequest


def nirvana(**sections) -> Harness:
    return Harness(
        make_config("nirvana", **sections),
        embedder=FakeEmbedder({"a cat": vector_at(1.0)}),
        cache=FakeLatentCache(k=15),
    )


def test_vanilla_generates_every_image_on_the_large_model_without_retrieval():
    h = Harness(make_config("vanilla"))

    async def scenario():
        await h.pipeline.start()
        return await h.pipeline.generate(ImageRequest("x", n=2, seed=5, width=128, height=96, steps=20))

    served = run(scenario())
    assert [c[0] for c in h.large.calls] == ["generate", "generate"]
    assert h.large.calls[0] == ("generate", "x", 128, 96, 20, 5) and served.images == [png_of(5), png_of(6)]
    assert not served.decision.hit and served.decision.model is ModelRole.LARGE
    assert "embed" not in served.decision.timings_s and h.metrics.events["overhead"] == 0


def test_nirvana_caches_a_miss_latents_and_resumes_a_repeat_from_them():
    h = nirvana()

    async def scenario():
        await h.pipeline.start()
        miss = await h.pipeline.generate(ImageRequest("a cat", seed=1))
        await h.pipeline.drain_admissions()
        hit = await h.pipeline.generate(ImageRequest("a cat", seed=2))
        return miss, hit

    miss, hit = run(scenario())
    assert not miss.decision.hit and h.large.calls[0][0] == "generate_with_snapshots"
    assert hit.decision.hit and hit.decision.k == 15 and hit.decision.strength == pytest.approx(1 - 15 / 50)
    assert h.large.calls[1] == ("resume", "a cat", 15, 64, 64, 50, 2)
    assert list(h.cache.entries) == [(vector_at(1.0).tobytes(), "default/64x64/50")]


@pytest.mark.parametrize("request_", [ImageRequest("a cat", steps=20), ImageRequest("a cat", n=2)])
def test_nirvana_looks_up_only_runs_it_can_resume(request_):
    """Another step count cannot resume latents of a T-step run (and caches none); n > 1 would resume copies."""
    h = nirvana()

    async def scenario():
        await h.pipeline.start()
        return await h.pipeline.generate(request_)

    served = run(scenario())
    assert not served.decision.hit and h.cache.lookups == 0
    expected = "generate" if request_.steps == 20 else "generate_with_snapshots"
    assert {c[0] for c in h.large.calls} == {expected}


def test_nirvana_without_retrieval_generates_without_caching():
    h = nirvana()
    h.embedder.fail = True

    async def scenario():
        await h.pipeline.start()
        return await h.pipeline.generate(ImageRequest("a cat"))

    run(scenario())
    assert h.large.calls[0][0] == "generate" and h.cache.entries == {}


def test_the_warm_up_fills_the_cache_before_serving_and_skips_what_it_holds(tmp_path):
    from modm.cache import ImageCache
    from modm.serving.services import ImageCacheService

    prompts = tmp_path / "warm.txt"
    prompts.write_text("a cat\na dog\n")
    config = make_config("modm", tmp_path / "c", cache={"warm": {"prompts": str(prompts)}})
    cache = ImageCacheService(ImageCache(config.cache, 8))
    try:
        first = Harness(config, embedder=FakeEmbedder(), cache=cache)
        run(first.pipeline.start())
        again = Harness(config, embedder=FakeEmbedder(), cache=cache)
        run(again.pipeline.start())
        entries = run(cache.stats())["entries"]
    finally:
        cache.cache.close()
    assert first.pipeline.warm_report == {"generated": 2, "already_cached": 0, "failed": 0, "namespace": "default"}
    assert again.pipeline.warm_report == {"generated": 0, "already_cached": 2, "failed": 0, "namespace": "default"}
    assert entries == 2 and {c[1] for c in first.large.calls} == {"a cat", "a dog"}
