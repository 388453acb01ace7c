"""Feature caches through diffusers' hooks: config, build-time refusals, skip counts on the real denoiser classes
(tiny SD3, FLUX, SDXL, SANA; the trained world's SD3 and SDXL), every path (txt2img, img2img, resume, step
batching), and per-request state: a request's decisions are its own, alone or batched."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from pydantic import ValidationError

from modm.config.feature_cache import FEATURE_CACHE_INFO_KEY, FeatureCacheKind
from modm.config.parallel import ParallelMethod
from modm.config.schema import ModelSpec
from modm.generation.capabilities import CapabilityError, ModelNeeds, check_model_capabilities
from modm.generation.feature_cache import feature_cache_problem
from modm.generation.generator import DiffusionGenerator, GenerationRequest
from modm.models.loading import load_pipeline
from tiny_families import tiny_flux_pipeline, tiny_sana_pipeline, tiny_sd3_pipeline

FBC = {"kind": "first_block", "threshold": 0.5}
TAYLORSEER = {"kind": "taylorseer", "cache_interval": 2, "disable_cache_before_step": 1}
PAB = {"kind": "pyramid_attention_broadcast", "spatial_attention_timestep_skip_range": (0, 1000)}
STEPS = 6
WORLD = "modm/world/weights"


def _spec(source: str, feature_cache: dict | None, **extra) -> ModelSpec:
    fields = {"device": "cpu", "default_size": 16, "max_size": 256, **extra}
    return ModelSpec(source=source, feature_cache=feature_cache, **fields)


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def _counts(image) -> dict:
    return image.info[FEATURE_CACHE_INFO_KEY]


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
    from modm.models.tokenizer import build_clip_tokenizer

    return build_clip_tokenizer(tmp_path_factory.mktemp("bpe"))


# ------------------------------------------------------------------------------------------------------ config
def test_the_config_takes_diffusers_names_and_defaults_and_refuses_the_rest():
    spec = _spec("x", {"kind": "first_block"})
    assert spec.feature_cache.threshold == 0.05  # FirstBlockCacheConfig's default
    taylor = _spec("x", {"kind": "taylorseer"}).feature_cache
    assert (taylor.cache_interval, taylor.disable_cache_before_step, taylor.max_order) == (5, 3, 1)
    assert _spec("x", None).feature_cache is None
    for bad in (
        {"kind": "teacache"},
        {"kind": "first_block", "treshold": 0.1},
        {"kind": "first_block", "threshold": 0},
        {"kind": "taylorseer", "disable_cache_before_step": 4, "disable_cache_after_step": 4},
        {"kind": "pyramid_attention_broadcast", "spatial_attention_timestep_skip_range": (800, 100)},
        {"kind": "pyramid_attention_broadcast", "spatial_attention_block_skip_range": None},
    ):
        with pytest.raises(ValidationError):
            _spec("x", bad)


@pytest.mark.parametrize(
    ("denoiser", "kind", "refused_because"),
    [
        ("SD3Transformer2DModel", FeatureCacheKind.FIRST_BLOCK, None),
        ("SD3Transformer2DModel", FeatureCacheKind.TAYLORSEER, None),
        ("FluxTransformer2DModel", FeatureCacheKind.FIRST_BLOCK, None),
        ("UNet2DConditionModel", FeatureCacheKind.PYRAMID_ATTENTION_BROADCAST, None),
        ("UNet2DConditionModel", FeatureCacheKind.FIRST_BLOCK, "U-Net down/up blocks"),
        ("SanaTransformer2DModel", FeatureCacheKind.FIRST_BLOCK, "TransformerBlockRegistry"),
        ("SanaTransformer2DModel", FeatureCacheKind.TAYLORSEER, "match none"),
        ("SanaTransformer2DModel", FeatureCacheKind.PYRAMID_ATTENTION_BROADCAST, None),
        ("PixArtTransformer2DModel", FeatureCacheKind.FIRST_BLOCK, "wired for"),
    ],
)
def test_build_time_check_names_the_reason(denoiser, kind, refused_because):
    problem = feature_cache_problem(denoiser, kind)
    if refused_because is None:
        assert problem is None
    else:
        assert refused_because in problem and kind.value in problem


def test_a_refused_kind_and_a_parallel_method_are_capability_errors_on_the_field(tiny_zoo):
    pipe = load_pipeline(_spec(str(tiny_zoo.small), None))
    with pytest.raises(CapabilityError) as refused:
        check_model_capabilities(pipe, ModelNeeds(feature_cache=FeatureCacheKind.FIRST_BLOCK), field="models.small")
    assert refused.value.field == "models.small.feature_cache.kind"
    needs = ModelNeeds(feature_cache=FeatureCacheKind.PYRAMID_ATTENTION_BROADCAST, parallel=ParallelMethod.ASYNCDIFF)
    with pytest.raises(CapabilityError, match="does not combine with parallel.method"):
        check_model_capabilities(pipe, needs, field="models.small")


# ------------------------------------------------------------------------------------------------------ hooks
def _tiny(name: str, clip_tokenizer, tiny_zoo):
    if name == "sd3":
        return tiny_sd3_pipeline(clip_tokenizer), {}
    if name == "flux":
        return tiny_flux_pipeline(clip_tokenizer), {"guidance_scale": 3.5, "max_sequence_length": 32}
    if name == "sana":
        return tiny_sana_pipeline(), {}
    return load_pipeline(_spec(str(tiny_zoo.small), None)), {}


@pytest.mark.parametrize(
    ("family", "feature_cache"),
    [("sd3", FBC), ("sd3", TAYLORSEER), ("flux", FBC), ("flux", TAYLORSEER), ("sdxl", PAB), ("sana", PAB)],
    ids=["sd3-first_block", "sd3-taylorseer", "flux-first_block", "flux-taylorseer", "sdxl-pab", "sana-pab"],
)
def test_the_hook_skips_work_and_each_request_starts_from_fresh_state(family, feature_cache, clip_tokenizer, tiny_zoo):
    pipe, extra = _tiny(family, clip_tokenizer, tiny_zoo)
    generator = DiffusionGenerator(pipe, _spec(f"tiny-{family}", feature_cache, **extra), "large")
    size = {"sdxl": 64, "sana": 32}.get(family, 16)
    request = GenerationRequest("a red cube", size, size, STEPS, seed=3)
    first = generator.txt2img(request)
    counts = _counts(first)
    assert counts["kind"] == feature_cache["kind"]
    assert counts["total"] == STEPS * generator.feature_cache.hooked_modules
    assert 0 < counts["skipped"] < counts["total"]
    again = generator.txt2img(request)  # no state left over from the first request
    assert np.array_equal(_pixels(first), _pixels(again)) and _counts(again) == counts


def test_taylorseer_skips_on_the_schedule_diffusers_documents(clip_tokenizer):
    """Step 0 computes (before disable_cache_before_step=1), then every cache_interval=2nd step from step 2: of 6
    steps, 0, 2 and 4 compute and 1, 3 and 5 are predicted."""
    generator = DiffusionGenerator(tiny_sd3_pipeline(clip_tokenizer), _spec("tiny-sd3", TAYLORSEER), "large")
    counts = _counts(generator.txt2img(GenerationRequest("a cube", 16, 16, STEPS, seed=0)))
    assert counts["total"] - counts["skipped"] == 3 * generator.feature_cache.hooked_modules


@pytest.fixture(scope="module")
def sd3_first_block(clip_tokenizer):
    return DiffusionGenerator(tiny_sd3_pipeline(clip_tokenizer), _spec("tiny-sd3", FBC), "large")


def test_refine_resume_and_snapshots_run_with_the_cache(sd3_first_block):
    generator = sd3_first_block
    request = GenerationRequest("a blue ball", 16, 16, STEPS, seed=1)
    image, latents = generator.txt2img_with_snapshots(request, (2,))
    assert _counts(image)["total"] == STEPS * generator.feature_cache.hooked_modules
    resumed = generator.resume(request, latents[2], 2)
    assert _counts(resumed)["total"] == (STEPS - 2) * generator.feature_cache.hooked_modules
    refined = generator.img2img(request, image, 0.5)
    assert _counts(refined)["total"] == (STEPS // 2) * generator.feature_cache.hooked_modules


@pytest.mark.parametrize(
    ("family", "feature_cache", "shares_passes"),
    [("sd3", FBC, False), ("sd3", TAYLORSEER, True), ("sdxl", PAB, True)],
    ids=["sd3-first_block", "sd3-taylorseer", "sdxl-pab"],
)
def test_a_request_gets_its_own_decisions_in_a_request_batch(
    family, feature_cache, shares_passes, clip_tokenizer, tiny_zoo
):
    """TaylorSeer and PAB decide by step alone: a request batch shares their passes and each request keeps the
    decisions and the image (within 1 grey level, as any request batch) it gets alone. The first-block cache decides
    from the whole batch's residual: its requests run one per call, bit-identical to alone."""
    from modm.generation.request_batching import RequestBatchingGenerator

    pipe, extra = _tiny(family, clip_tokenizer, tiny_zoo)
    generator = DiffusionGenerator(pipe, _spec(f"tiny-{family}", feature_cache, **extra), "large")
    assert generator.feature_cache.batch_invariant is shares_passes
    size = 64 if family == "sdxl" else 16
    requests = [GenerationRequest(p, size, size, STEPS, seed) for p, seed in (("a blue ball", 1), ("noise", 9))]
    alone = [generator.txt2img(req) for req in requests]
    batcher = RequestBatchingGenerator(generator, max_batch_size=4, max_wait_s=0.2)

    async def together():
        return await asyncio.gather(*(batcher.txt2img(req) for req in requests))

    batched = asyncio.run(together())
    assert batcher.costs.as_dict()["passes"] == ({2: 1} if shares_passes else {1: 2})
    for one, among in zip(alone, batched):
        assert _counts(one) == _counts(among)
        difference = np.abs(_pixels(one).astype(np.int16) - _pixels(among))
        assert difference.max() <= (1 if shares_passes else 0)
    assert generator.txt2img_batch(requests)[1].info[FEATURE_CACHE_INFO_KEY] == _counts(alone[1])  # without a batcher

    # Refinements (MoDM's hits) at one strength share a call the same way.
    refined_alone = [generator.img2img(req, image, 0.5) for req, image in zip(requests, alone)]

    async def refine_together():
        return await asyncio.gather(*(batcher.img2img(req, image, 0.5) for req, image in zip(requests, alone)))

    for one, among in zip(refined_alone, asyncio.run(refine_together())):
        assert _counts(one) == _counts(among)
        assert np.abs(_pixels(one).astype(np.int16) - _pixels(among)).max() <= (1 if shares_passes else 0)
    assert batcher.costs.as_dict()["passes"] == ({2: 2} if shares_passes else {1: 4})


def test_step_batching_keeps_each_request_on_its_own_cache_state(tiny_zoo):
    from modm.generation.step_batching import StepBatchingGenerator

    spec = _spec(str(tiny_zoo.large), FBC, max_sequence_length=1, default_size=64)
    diffusion = DiffusionGenerator.from_spec(spec, "large")
    passes: list[int] = []
    engine = StepBatchingGenerator(
        diffusion, max_batch_size=4, max_wait_s=0.05, on_pass=lambda size, seconds, steps: passes.append(size)
    )
    target = GenerationRequest("a red cube", 64, 64, STEPS, seed=5)
    others = [GenerationRequest(f"other {i}", 64, 64, STEPS, seed=i) for i in range(2)]

    async def run(requests):
        return await asyncio.gather(*[engine.txt2img(req) for req in requests])

    try:
        (alone,) = asyncio.run(run([target]))
        together = asyncio.run(run([*others, target]))
    finally:
        engine.close()
    assert np.array_equal(_pixels(alone), _pixels(together[-1]))
    assert _counts(alone) == _counts(together[-1])
    assert set(passes) == {1}  # one request per denoiser pass
    assert np.array_equal(_pixels(alone), _pixels(diffusion.txt2img(target)))  # and as the pipeline call's


# ------------------------------------------------------------------------------------------------- the world
@pytest.mark.parametrize(
    ("role", "feature_cache"),
    [("large", {"kind": "first_block", "threshold": 0.2}), ("large", {"kind": "taylorseer"}), ("small", PAB)],
    ids=["large-first_block", "large-taylorseer", "small-pab"],
)
def test_the_world_models_take_their_feature_caches(role, feature_cache):
    spec = _spec(f"{WORLD}/{role}", feature_cache, default_size=32, max_size=64, num_inference_steps=8)
    generator = DiffusionGenerator.from_spec(spec, role)
    counts = _counts(generator.txt2img(GenerationRequest("a red circle", 32, 32, 8, seed=0)))
    assert 0 < counts["skipped"] < counts["total"]


# ----------------------------------------------------------------------------------------- service and decision
def test_the_counts_reach_the_png_the_metrics_and_the_decision(sd3_first_block):
    from modm.generation.local import LocalGenerator
    from modm.generation.service import ModelService
    from modm.serving.pipeline import feature_cache_counts

    service = ModelService(LocalGenerator(sd3_first_block), sd3_first_block.spec)
    pngs = [asyncio.run(service.generate("a blue ball", 16, 16, STEPS, seed)) for seed in (1, 2)]
    counts = [json.loads(png_text) for png_text in map(_png_text, pngs)]
    summed = feature_cache_counts(pngs)
    assert summed["total"] == sum(c["total"] for c in counts) and summed["skipped"] == sum(c["skipped"] for c in counts)
    assert dict(service.metrics.feature_cache_calls) == {"skipped": summed["skipped"], "total": summed["total"]}
    assert feature_cache_counts([_plain_png()]) is None


def _png_text(png: bytes) -> str:
    from modm.images import png_text

    return png_text(png, FEATURE_CACHE_INFO_KEY)


def _plain_png() -> bytes:
    from PIL import Image

    from modm.images import png_bytes

    return png_bytes(Image.new("RGB", (4, 4)))
