"""The OpenAI Images API through the pipeline, with fakes: every generation field, quality -> steps, the served
model's id, output formats, URL answers from the response store with signed links, and edits."""

import asyncio
import io

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError
from serving_fakes import FakeEmbedder, FakePool
from serving_kit import make_config, run

from modm.cache import ImageCache
from modm.config.schema import ImageQuality
from modm.images import ImageFormat
from modm.roles import ModelRole
from modm.serving import Backends, RequestPipeline
from modm.serving.errors import NotFound, RequestInvalid
from modm.serving.images_api import EditBody, GenerationBody
from modm.serving.request import Delivery, EditRequest, ImageRequest
from modm.serving.response_store import ResponseStore
from modm.serving.services import ImageCacheService

EVERY_FIELD = {
    "prompt": "a red bicycle",
    "model": "modm",
    "n": 2,
    "size": "auto",
    "quality": "low",
    "style": "vivid",
    "user": "u-1",
    "safety_identifier": "hash-1",
    "background": "opaque",
    "output_format": "webp",
    "output_compression": 40,
    "moderation": "low",
    "response_format": "url",
    "stream": False,
    "partial_images": 2,
    "complexity": "high",
}


class FakeClock:
    def __init__(self):
        self.now = 1_000_000.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)


def upload(size=(100, 70), mode="RGB", fmt="PNG", color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def build(tmp_path):
    """A started pipeline over fake pools and a response store on a fake clock (MoDM: a real image cache)."""
    caches = []

    async def start(mode="modm", **sections):
        config = make_config(mode, tmp_path / f"cache{len(caches)}", **sections)
        clock = FakeClock()
        pools = {ModelRole.LARGE: FakePool()}
        extra = {}
        if mode == "modm":
            pools[ModelRole.SMALL] = FakePool()
            caches.append(ImageCache(config.cache, 8))
            extra = {"embedder": FakeEmbedder(), "cache": ImageCacheService(caches[-1])}
        store = ResponseStore(config.serving.image_url_ttl_s, config.serving.response_store_max_bytes, clock.monotonic)
        pipeline = RequestPipeline(config, Backends(models=pools, store=store, clock=clock, **extra))
        await pipeline.start()
        return pipeline, pools, clock

    yield start
    for cache in caches:
        cache.close()


# ------------------------------------------------------------------------------------------------ request bodies
def test_every_openai_field_is_accepted_and_mapped():
    body = GenerationBody.model_validate(EVERY_FIELD)
    request = body.image_request("t1")
    assert (request.width, request.height, request.n, request.model) == (None, None, 2, "modm")
    assert request.quality is ImageQuality.LOW and request.steps is None
    assert body.delivery() == Delivery(ImageFormat.WEBP, compression=40, as_url=True)


@pytest.mark.parametrize(
    "fields, fragment",
    [
        ({"stream": True}, "stream=true"),
        ({"output_format": "gif"}, "output_format='gif'"),
        ({"output_format": "svg"}, "output_format='svg'"),
        ({"svg": {"model": "x"}}, "svg"),
        ({"frame_count": 4}, "frame_count"),
        ({"frame_duration_ms": 100}, "frame_duration_ms"),
        ({"background": "transparent"}, "transparent"),
        ({"output_compression": 50}, "output_compression"),
        ({"output_format": "png", "output_compression": 50}, "png is lossless"),
    ],
)
def test_values_not_served_are_refused_with_400_naming_them(fields, fragment):
    with pytest.raises(RequestInvalid, match=fragment) as err:
        GenerationBody.model_validate({"prompt": "x", **fields}).image_request("t1")
    assert err.value.status == 400


@pytest.mark.parametrize("fields", [{"unexpected": 1}, {"size": "big"}, {"quality": "ultra"}, {"partial_images": 4}])
def test_unknown_fields_and_bad_values_fail_validation_naming_the_field(fields):
    with pytest.raises(ValidationError) as err:
        GenerationBody.model_validate({"prompt": "x", **fields})
    assert next(iter(fields)) in str(err.value)


# --------------------------------------------------------------------------------------------- generation fields
def test_quality_maps_to_steps_per_model_and_auto_size_is_the_default(build):
    async def scenario():
        pipeline, pools, _ = await build("vanilla", models={"large": {"source": "x", "quality_steps": {"high": 40}}})
        for quality in ("low", "medium", "high", "auto", "hd"):
            await pipeline.generate(ImageRequest("a cat", quality=ImageQuality(quality)))
        return [call[4] for call in pools[ModelRole.LARGE].calls], pools[ModelRole.LARGE].calls[0][2:4]

    steps, size = run(scenario())
    # make_config's models have T=50 (the fake pool reports 50); low 1/2, medium 3/4, high configured, others T.
    assert steps == [25, 38, 40, 50, 50]
    assert size == (64, 64)


def test_steps_and_quality_exclude_each_other(build):
    async def scenario():
        pipeline, _, _ = await build("vanilla")
        await pipeline.generate(ImageRequest("a cat", steps=10, quality=ImageQuality.AUTO))  # auto: no conflict
        with pytest.raises(RequestInvalid, match="steps or quality"):
            await pipeline.generate(ImageRequest("a cat", steps=10, quality=ImageQuality.LOW))

    run(scenario())


def test_model_must_be_the_served_id(build):
    async def scenario():
        pipeline, _, _ = await build("vanilla", serving={"model_id": "my-modm"})
        await pipeline.generate(ImageRequest("a cat", model="my-modm"))
        with pytest.raises(RequestInvalid, match="'dall-e-3' is not served here; this system is 'my-modm'"):
            await pipeline.generate(ImageRequest("a cat", model="dall-e-3"))
        listed = pipeline.models()
        with pytest.raises(NotFound):
            pipeline.model("dall-e-3")
        return listed, pipeline.model("my-modm")

    listed, card = run(scenario())
    assert [m.id for m in listed.data] == ["my-modm"] and listed.object == "list"
    assert card.object == "model" and card.created == 1_000_000


@pytest.mark.parametrize("image_format", [ImageFormat.JPEG, ImageFormat.WEBP])
def test_output_formats_are_encoded_and_compression_trades_size(build, image_format):
    async def scenario():
        pipeline, _, _ = await build("vanilla")
        served = await pipeline.generate(ImageRequest("a cat"))
        noisy = _noise_png()
        out = {}
        for quality in (10, 95):
            [image] = await pipeline.deliver([noisy], Delivery(image_format, compression=quality), "t1")
            out[quality] = image
        [default] = await pipeline.deliver(served.images, Delivery(image_format), "t1")
        return out, default

    out, default = run(scenario())
    for image in (*out.values(), default):
        assert image.media_type == f"image/{image_format.value}"
        assert Image.open(io.BytesIO(image.data)).format == image_format.name
    assert len(out[10].data) < len(out[95].data)


def _noise_png() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------- URL answers
def test_url_answers_are_stored_before_the_answer_and_open_with_their_signature(build):
    async def scenario():
        pipeline, _, clock = await build("vanilla", serving={"image_url_ttl_s": 60})
        served = await pipeline.generate(ImageRequest("a cat", n=2, tenant="alice"))
        links = [d.link for d in await pipeline.deliver(served.images, Delivery(as_url=True), "alice")]
        first = links[0]
        opened = await pipeline.stored_image(first.image_id, first.expires, first.signature, None, None)
        as_owner = await pipeline.stored_image(first.image_id, first.expires, first.signature, "alice", None)
        refused = []
        for args in (
            (first.image_id, first.expires, "0" * 64, None, None),  # forged signature
            (first.image_id, first.expires + 3600, first.signature, None, None),  # extended expiry
            (links[1].image_id, first.expires, first.signature, None, None),  # another image's signature
            (first.image_id, first.expires, first.signature, "bob", None),  # another tenant
            ("0" * 32, first.expires, first.signature, None, None),  # unknown id
        ):
            with pytest.raises(NotFound) as err:
                await pipeline.stored_image(*args)
            refused.append(err.value.message)
        clock.now += 61
        with pytest.raises(NotFound):
            await pipeline.stored_image(first.image_id, first.expires, first.signature, None, None)
        return served, links, opened, as_owner, refused

    served, links, opened, as_owner, refused = run(scenario())
    assert len({link.image_id for link in links}) == 2 and all(link.expires == 1_000_060 for link in links)
    assert opened.data == served.images[0] == as_owner.data and opened.media_type == "image/png"
    assert len(set(refused)) == 1  # every refusal looks alike


def test_links_signed_by_another_key_do_not_open(build):
    async def scenario():
        pipeline, _, _ = await build("vanilla")
        other = RequestPipeline(pipeline.config, pipeline.backends, signing_key=b"k" * 32)
        [delivered] = await other.deliver([b"\x89PNG fake"], Delivery(as_url=True), "alice")
        link = delivered.link
        with pytest.raises(NotFound):
            await pipeline.stored_image(link.image_id, link.expires, link.signature, None, None)
        return await other.stored_image(link.image_id, link.expires, link.signature, None, None)

    assert run(scenario()).data == b"\x89PNG fake"


def test_the_response_store_drops_its_oldest_images_beyond_its_budget_and_expires_them():
    clock = FakeClock()
    store = ResponseStore(ttl_s=10, max_bytes=25, monotonic=clock.monotonic)

    async def scenario():
        a = await store.put(b"a" * 10, "image/png", "t")
        b = await store.put(b"b" * 10, "image/png", "t")
        c = await store.put(b"c" * 10, "image/png", "t")  # 30 > 25: a goes
        kept = [await store.get(i) is not None for i in (a, b, c)]
        with pytest.raises(ValueError, match="exceeds"):
            await store.put(b"x" * 26, "image/png", "t")
        clock.now += 10
        return kept, await store.get(c), await store.stats()

    kept, expired, stats = run(scenario())
    assert kept == [False, True, True] and expired is None
    assert stats == {"images": 0, "bytes": 0, "dropped": 1}


# ----------------------------------------------------------------------------------------------------------- edits
def test_an_edit_refines_the_upload_on_the_small_pool_and_is_never_cached(build):
    async def scenario():
        pipeline, pools, _ = await build("modm")
        served = await pipeline.edit(EditRequest("make it blue", n=2, seed=5, image=upload((100, 70)), strength=0.5))
        await pipeline.drain_admissions()
        return served, pools, await pipeline.stats()

    served, pools, stats = run(scenario())
    calls = pools[ModelRole.SMALL].calls
    # No size: the image's own, rounded down to the size multiple (8); steps T=50; k = the steps skipped.
    assert [c[0] for c in calls] == ["refine", "refine"] and calls[0][2:] == (0.5, 96, 64, 50, 5)
    assert calls[1][-1] == 6 and pools[ModelRole.LARGE].calls == []
    d = served.decision
    assert (d.operation, d.model, d.k, d.strength, d.hit) == ("edit", ModelRole.SMALL, 25, 0.5, False)
    assert (served.width, served.height) == (96, 64)
    assert stats["cache"]["entries"] == 0 and stats["edits"] == 1 and stats["requests"] == 0


def test_vanilla_edits_use_the_large_models_img2img_and_quality_maps_on_it(build):
    async def scenario():
        pipeline, pools, _ = await build("vanilla")
        await pipeline.edit(EditRequest("x", image=upload(), width=64, height=64, quality=ImageQuality.MEDIUM))
        return pools[ModelRole.LARGE].calls

    assert run(scenario()) == [("refine", "x", 0.6, 64, 64, 38, 42)]


def test_edits_are_refused_when_the_model_runs_parallel_inference(build):
    parallel = {"source": "x", "parallel": {"method": "distrifusion", "world_size": 2}}

    async def scenario():
        pipeline, _, _ = await build("vanilla", models={"large": parallel})
        await pipeline.edit(EditRequest("x", image=upload()))

    with pytest.raises(RequestInvalid, match="parallel inference"):
        run(scenario())


def _cmyk() -> bytes:
    buffer = io.BytesIO()
    Image.new("CMYK", (16, 16)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _half_transparent() -> bytes:
    image = Image.new("RGBA", (16, 16), (0, 0, 0, 255))
    image.putpixel((3, 3), (0, 0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"not an image at all", "not an image"),
        (upload(fmt="GIF", mode="P", color=1), "GIF"),
        (upload((2048, 16)), "2048x16"),
        (_cmyk(), "CMYK"),
        (_half_transparent(), "transparent pixels"),
        (upload()[:60], "image"),
    ],
    ids=["not-an-image", "gif", "too-large", "cmyk", "transparent", "truncated"],
)
def test_bad_images_are_refused_with_the_reason(build, data, fragment):
    async def scenario():
        pipeline, pools, _ = await build("modm")
        try:
            await pipeline.edit(EditRequest("x", image=data))
        finally:
            assert pools[ModelRole.SMALL].calls == []

    with pytest.raises(RequestInvalid, match=fragment) as err:
        run(scenario())
    assert err.value.message.startswith("image: ")


def test_an_opaque_rgba_image_is_accepted(build):
    async def scenario():
        pipeline, pools, _ = await build("modm")
        await pipeline.edit(EditRequest("x", image=upload((64, 64), mode="RGBA", color=(1, 2, 3, 255))))
        return pools[ModelRole.SMALL].calls

    assert len(run(scenario())) == 1


@pytest.mark.parametrize(
    "files, fragment",
    [
        ({"image": [b"a"], "mask": [b"m"]}, "mask"),
        ({"image": [b"a", b"b"]}, "exactly one image"),
        ({}, "exactly one image"),
        ({"image": [b"a"], "picture": [b"p"]}, "picture"),
    ],
)
def test_edit_forms_with_a_mask_or_not_one_image_are_refused(files, fragment):
    body = EditBody.model_validate({"prompt": "x", "strength": "0.3", "n": "2"})
    assert (body.strength, body.n) == (0.3, 2)  # multipart fields arrive as text
    with pytest.raises(RequestInvalid, match=fragment):
        body.edit_request("t1", files)
    assert body.edit_request("t1", {"image[]": [b"a"]}).image == b"a"
