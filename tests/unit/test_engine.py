"""The engine's miss and hit paths end to end: tiny zoo models, real MiniLM similarity, a real on-disk cache."""

import numpy as np
import pytest

from modm.cache import ImageCache
from modm.config import config_from_dict
from modm.engine import Engine, ImageRequest
from modm.generation import DiffusionGenerator, InvalidRequestError


def make_config(zoo, cache_dir, **overrides):
    model = {"device": "cpu", "num_inference_steps": 4, "default_size": 64, "max_size": 128}
    data = {
        "mode": "modm",
        "models": {"large": {"source": str(zoo.large), **model}, "small": {"source": str(zoo.small), **model}},
        "embedder": {"kind": "minilm", "device": "cpu"},
        "cache": {"directory": str(cache_dir), "admission": "cache-all"},
        "policy": {"k_table": "minilm-text"},
        "limits": {"max_prompt_chars": 300, "max_steps": 8},
        **overrides,
    }
    return config_from_dict(data)


@pytest.fixture(scope="module")
def generators(tiny_zoo, tmp_path_factory):
    cfg = make_config(tiny_zoo, tmp_path_factory.mktemp("unused"))
    return (
        DiffusionGenerator.from_spec(cfg.models.large, "large"),
        DiffusionGenerator.from_spec(cfg.models.small, "small"),
    )


def engine_for(cfg, generators, minilm):
    large, small = generators
    return Engine(cfg, large=large, small=small, embedder=minilm, cache=ImageCache(cfg.cache, minilm.dim))


def test_miss_then_hit_on_a_paraphrase_then_miss_on_unrelated(tiny_zoo, tmp_path, generators, minilm):
    engine = engine_for(make_config(tiny_zoo, tmp_path / "c"), generators, minilm)
    first = engine.generate(ImageRequest("a cute cat sitting on a sofa, photo", tenant="t1"))
    assert not first.record.hit and first.record.model == "large" and first.record.score is None
    assert first.record.admitted_entry is not None and len(engine.cache) == 1
    assert first.image.size == (64, 64)

    again = engine.generate(ImageRequest("a cute cat sitting on a sofa, photo", tenant="t1"))
    assert again.record.hit and again.record.model == "small"
    assert again.record.k == 30 and again.record.strength == pytest.approx(0.4)
    assert again.record.matched_entry == first.record.admitted_entry

    paraphrase = engine.generate(ImageRequest("a cute kitten sitting on a sofa, photo", tenant="t1"))
    assert paraphrase.record.hit and 0 < paraphrase.record.k < 30

    unrelated = engine.generate(ImageRequest("a spaceship orbiting jupiter", tenant="t1"))
    assert not unrelated.record.hit and unrelated.record.score < 0.6
    assert {"embed", "retrieve", "generate", "admit"} <= set(unrelated.record.timings_s)


def test_tenants_do_not_share_cached_images(tiny_zoo, tmp_path, generators, minilm):
    engine = engine_for(make_config(tiny_zoo, tmp_path / "c"), generators, minilm)
    engine.generate(ImageRequest("a lighthouse in a storm", tenant="alice"))
    other = engine.generate(ImageRequest("a lighthouse in a storm", tenant="bob"))
    assert not other.record.hit


def test_cache_large_does_not_admit_refined_hits(tiny_zoo, tmp_path, generators, minilm):
    cfg = make_config(tiny_zoo, tmp_path / "c", cache={"directory": str(tmp_path / "c"), "admission": "cache-large"})
    engine = engine_for(cfg, generators, minilm)
    engine.generate(ImageRequest("a red bicycle leaning on a wall"))
    hit = engine.generate(ImageRequest("a red bicycle leaning against a wall"))
    assert hit.record.hit and hit.record.admitted_entry is None and len(engine.cache) == 1


def test_results_are_deterministic_by_seed(tiny_zoo, tmp_path, generators, minilm):
    a = engine_for(make_config(tiny_zoo, tmp_path / "a"), generators, minilm)
    b = engine_for(make_config(tiny_zoo, tmp_path / "b"), generators, minilm)
    for prompt in ("an old castle on a hill", "an old castle on a hill at dusk"):
        ra, rb = a.generate(ImageRequest(prompt, seed=3)), b.generate(ImageRequest(prompt, seed=3))
        assert (ra.record.hit, ra.record.k) == (rb.record.hit, rb.record.k)
        assert np.array_equal(np.asarray(ra.image), np.asarray(rb.image))


def test_cache_survives_a_restart(tiny_zoo, tmp_path, generators, minilm):
    cfg = make_config(tiny_zoo, tmp_path / "c")
    engine = engine_for(cfg, generators, minilm)
    engine.generate(ImageRequest("a bowl of ramen noodles"))
    engine.cache.close()
    reopened = engine_for(cfg, generators, minilm)
    assert reopened.generate(ImageRequest("a bowl of ramen noodles")).record.hit


def test_vanilla_mode_never_touches_a_cache(tiny_zoo, tmp_path, generators):
    cfg = make_config(tiny_zoo, tmp_path / "c", mode="vanilla")
    engine = Engine(cfg, large=generators[0])
    for _ in range(2):
        result = engine.generate(ImageRequest("a bowl of ramen noodles"))
        assert not result.record.hit and result.record.model == "large"
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    "request_, message",
    [
        (ImageRequest(""), "prompt"),
        (ImageRequest("x" * 301), "301 characters"),
        (ImageRequest("ok", steps=0), "steps=0"),
        (ImageRequest("ok", steps=9), "steps=9"),
        (ImageRequest("ok", width=100, height=64), "width=100"),
        (ImageRequest("ok", width=256, height=256), "largest size"),
        (ImageRequest("ok", tenant=""), "tenant"),
    ],
)
def test_bad_requests_fail_before_any_work(tiny_zoo, tmp_path, generators, minilm, request_, message):
    engine = engine_for(make_config(tiny_zoo, tmp_path / "c"), generators, minilm)
    with pytest.raises(InvalidRequestError, match=message):
        engine.generate(request_)
    assert len(engine.cache) == 0
