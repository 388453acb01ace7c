"""The pipeline in one process with real backends: tiny zoo models, real MiniLM similarity, a real on-disk cache
(what `modm demo` runs)."""

import numpy as np
import pytest

from modm.cache import ImageCache
from modm.config import config_from_dict
from modm.embedding import build_embedder
from modm.generation import LocalGenerator, ModelService
from modm.images import decode_png
from modm.roles import ModelRole
from modm.serving import Backends, ImageRequest, RequestPipeline
from modm.serving.errors import RequestRefused
from modm.serving.services import EmbedderService, ImageCacheService

from serving_kit import run


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
def services(tiny_zoo, tmp_path_factory):
    """The models and the embedder, loaded once for the module; each test opens its own cache."""
    cfg = make_config(tiny_zoo, tmp_path_factory.mktemp("unused"))
    models = {
        role: ModelService(
            LocalGenerator.from_spec(getattr(cfg.models, role.value), role.value), getattr(cfg.models, role.value)
        )
        for role in ModelRole
    }
    return models, EmbedderService(build_embedder(cfg.embedder))


class Served:
    def __init__(self, cfg, services):
        models, embedder = services
        self.cache = ImageCache(cfg.cache, embedder.embedder.dim) if cfg.mode.value == "modm" else None
        if self.cache is None:
            backends = Backends(models={ModelRole.LARGE: models[ModelRole.LARGE]})
        else:
            backends = Backends(models=models, embedder=embedder, cache=ImageCacheService(self.cache))
        self.pipeline = RequestPipeline(cfg, backends)
        run(self.pipeline.start())

    def __call__(self, request: ImageRequest):
        async def serve():
            served = await self.pipeline.generate(request)
            await self.pipeline.drain_admissions()
            return served

        return run(serve())

    def close(self):
        if self.cache is not None:
            self.cache.close()


@pytest.fixture
def served(tiny_zoo, tmp_path, services):
    opened = []

    def build(**overrides):
        opened.append(Served(make_config(tiny_zoo, tmp_path / f"c{len(opened)}", **overrides), services))
        return opened[-1]

    yield build
    for s in opened:
        s.close()


def test_miss_then_hit_on_a_paraphrase_then_miss_on_unrelated(served):
    serve = served()
    first = serve(ImageRequest("a cute cat sitting on a sofa, photo", tenant="t1"))
    assert not first.decision.hit and first.decision.model is ModelRole.LARGE and first.decision.score is None
    assert len(serve.cache) == 1 and decode_png(first.images[0]).size == (64, 64)

    again = serve(ImageRequest("a cute cat sitting on a sofa, photo", tenant="t1"))
    assert again.decision.hit and again.decision.model is ModelRole.SMALL
    assert again.decision.k == 30 and again.decision.strength == pytest.approx(0.4)
    assert again.decision.entry_id == 0

    paraphrase = serve(ImageRequest("a cute kitten sitting on a sofa, photo", tenant="t1"))
    assert paraphrase.decision.hit and 0 < paraphrase.decision.k < 30

    unrelated = serve(ImageRequest("a spaceship orbiting jupiter", tenant="t1"))
    assert not unrelated.decision.hit and unrelated.decision.score < 0.6
    assert {"embed", "retrieve", "generate"} <= set(unrelated.decision.timings_s)


def test_tenants_do_not_share_cached_images(served):
    serve = served()
    serve(ImageRequest("a lighthouse in a storm", tenant="alice"))
    assert not serve(ImageRequest("a lighthouse in a storm", tenant="bob")).decision.hit


def test_cache_large_does_not_admit_refined_hits(served):
    serve = served(cache={"admission": "cache-large"})
    serve(ImageRequest("a red bicycle leaning on a wall"))
    hit = serve(ImageRequest("a red bicycle leaning against a wall"))
    assert hit.decision.hit and len(serve.cache) == 1


def test_results_are_deterministic_by_seed(served):
    a, b = served(), served()
    for prompt in ("an old castle on a hill", "an old castle on a hill at dusk"):
        ra, rb = a(ImageRequest(prompt, seed=3)), b(ImageRequest(prompt, seed=3))
        assert (ra.decision.hit, ra.decision.k) == (rb.decision.hit, rb.decision.k)
        assert np.array_equal(np.asarray(decode_png(ra.images[0])), np.asarray(decode_png(rb.images[0])))


def test_cache_survives_a_restart(tiny_zoo, tmp_path, services):
    cfg = make_config(tiny_zoo, tmp_path / "c")
    first = Served(cfg, services)
    first(ImageRequest("a bowl of ramen noodles"))
    first.close()
    reopened = Served(cfg, services)
    try:
        assert reopened(ImageRequest("a bowl of ramen noodles")).decision.hit
    finally:
        reopened.close()


def test_vanilla_mode_never_touches_a_cache(served, tmp_path):
    serve = served(mode="vanilla")
    for _ in range(2):
        result = serve(ImageRequest("a bowl of ramen noodles"))
        assert not result.decision.hit and result.decision.model is ModelRole.LARGE
    assert not (tmp_path / "c0").exists()


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
def test_bad_requests_fail_before_any_work(served, request_, message):
    serve = served()
    with pytest.raises(RequestRefused, match=message) as err:
        serve(request_)
    assert err.value.status == 400 and len(serve.cache) == 0
