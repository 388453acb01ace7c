"""The official `openai` Python client against the Serve app through real HTTP (issue 19): generate with every
field, b64 and URL answers in png/jpeg/webp, edits, models, the OpenAPI schema, and each error class.

The session app (modm mode, open API) serves the calls that need no keys; a small vanilla app ("openai-keys", route
/openai) with API keys, a 1.5 s admission bound over a declared 1 s per request and a 3 s request timeout serves
401, 403, 429 and 504, and links that must open without a key."""

import base64
import hashlib
import io
import threading
import time
from urllib.parse import urlsplit

import httpx
import openai
import pytest
from PIL import Image

from tools.local_cluster import wait_healthy

pytestmark = pytest.mark.ray

TENANT = {"X-Tenant-Id": "it-openai"}
KEYS = {"k-oa-alice": "alice", "k-oa-bob": "bob"}
AUTH_ALICE = {"Authorization": "Bearer k-oa-alice"}


@pytest.fixture(scope="module")
def oa(serve_app):
    with openai.OpenAI(base_url=f"{serve_app}/v1", api_key="unused", max_retries=0, timeout=120) as client:
        yield client


def png(size=(64, 64), color=(20, 120, 220), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def opened(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


# -------------------------------------------------------------------------------------------------- generations
def test_generate_with_every_field_answers_signed_urls(oa, serve_app):
    result = oa.images.generate(
        prompt="a red bicycle leaning on a brick wall",
        model="modm",
        n=2,
        size="auto",
        quality="low",
        style="natural",
        user="user-1",
        safety_identifier="hash-1",
        background="opaque",
        output_format="jpeg",
        output_compression=80,
        moderation="auto",
        response_format="url",
        stream=False,
        partial_images=0,
        complexity="low",
        extra_headers=TENANT,
    )
    assert result.output_format == "jpeg" and result.size == "64x64" and result.background == "opaque"
    assert len(result.data) == 2 and all(d.b64_json is None for d in result.data)
    with httpx.Client(timeout=30) as browser:  # no API key, no tenant: the signature is the credential
        for item in result.data:
            assert item.url.startswith(f"{serve_app}/v1/images/")
            image = browser.get(item.url)
            assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
            assert opened(image.content).format == "JPEG" and opened(image.content).size == (64, 64)
        url = result.data[0].url
        other = browser.get(url, headers={"X-Tenant-Id": "it-someone-else"})
        tampered = browser.get(url.replace("signature=", "signature=0"))
        assert other.status_code == 404 and tampered.status_code == 404
        assert other.json() == tampered.json() and other.json()["error"]["type"] == "not_found"


@pytest.mark.parametrize("output_format", ["png", "webp"])
def test_generate_b64_in_each_format(oa, output_format):
    result = oa.images.generate(
        prompt="a lighthouse at dawn", size="64x64", output_format=output_format, extra_headers=TENANT
    )
    image = opened(base64.b64decode(result.data[0].b64_json))
    assert image.format == output_format.upper() and image.size == (64, 64)


# --------------------------------------------------------------------------------------------------------- edits
def test_edit_refines_the_upload_on_the_small_model_and_is_not_cached(oa, client, serve_app):
    from ray import serve

    router = serve.get_deployment_handle("Router", app_name="modm")
    router.drain_admissions.remote().result(timeout_s=60)
    before = client.get("/v1/stats").json()
    result = oa.images.edit(
        image=("photo.png", png((72, 64)), "image/png"),
        prompt="the same scene at night",
        n=1,
        extra_body={"strength": 0.5, "seed": 3},
        extra_headers=TENANT,
    )
    router.drain_admissions.remote().result(timeout_s=60)
    after = client.get("/v1/stats").json()
    image = opened(base64.b64decode(result.data[0].b64_json))
    assert image.size == (64, 64) and result.size == "64x64"  # 72 rounded down to the size multiple
    decision = result.model_extra["modm"]
    assert decision["operation"] == "edit" and decision["model"] == "small" and decision["strength"] == 0.5
    assert after["edits"] == before["edits"] + 1
    assert after["cache"]["admissions"] == before["cache"]["admissions"]  # edits are never cached


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"image": ("a.png", b"not an image", "image/png")}, "not an image"),
        ({"image": ("a.png", png(mode="RGBA", color=(0, 0, 0, 0)), "image/png")}, "transparent"),
        ({"image": ("a.png", png((512, 64)), "image/png")}, "512x64"),
        ({"image": ("a.png", png(), "image/png"), "mask": ("m.png", png(), "image/png")}, "mask"),
    ],
)
def test_bad_edits_get_400_with_the_reason(oa, kwargs, fragment):
    with pytest.raises(openai.BadRequestError) as err:
        oa.images.edit(prompt="x", **kwargs, extra_headers=TENANT)
    assert fragment in err.value.body["message"]


# -------------------------------------------------------------------------------------------- models and schema
def test_models_in_openais_shape(oa):
    listed = oa.models.list()
    assert [m.id for m in listed.data] == ["modm"] and listed.data[0].object == "model"
    assert oa.models.retrieve("modm").owned_by == "modm"
    with pytest.raises(openai.NotFoundError):
        oa.models.retrieve("dall-e-3")


def test_the_openapi_schema_documents_every_answer(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert set(spec["components"]["schemas"]["ErrorBody"]["properties"]) == {"error"}
    for path in ("/v1/images/generations", "/v1/images/edits"):
        responses = paths[path]["post"]["responses"]
        assert {"200", "400", "401", "403", "413", "422", "429", "503", "504"} <= set(responses)
        assert "Retry-After" in responses["429"]["headers"] and "Retry-After" in responses["503"]["headers"]
        assert "WWW-Authenticate" in responses["401"]["headers"]
        for status in ("400", "401", "403", "413", "422", "429", "503", "504"):
            schema = responses[status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, status
    assert "multipart/form-data" in paths["/v1/images/edits"]["post"]["requestBody"]["content"]
    assert "404" in paths["/v1/images/{image_id}"]["get"]["responses"]
    assert "/v1/models" in paths and "/v1/models/{model_id}" in paths


# -------------------------------------------------------------------------------------- errors on the open app
@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        ({"size": "65x64"}, openai.BadRequestError, "width=65"),
        ({"model": "dall-e-3"}, openai.BadRequestError, "not served here"),
        ({"output_format": "gif"}, openai.BadRequestError, "gif"),
        ({"background": "transparent"}, openai.BadRequestError, "transparent"),
        ({"extra_body": {"unexpected": 1}}, openai.UnprocessableEntityError, "unexpected"),
        ({"quality": "ultra"}, openai.UnprocessableEntityError, "quality"),
    ],
)
def test_refusals_reach_the_client_as_its_error_classes(oa, kwargs, error, fragment):
    with pytest.raises(error) as err:
        oa.images.generate(prompt="x", **kwargs)
    assert fragment in err.value.body["message"] and err.value.body["type"]


def test_stream_is_refused_with_400(oa):
    with pytest.raises(openai.BadRequestError, match="stream"):
        oa.images.generate(prompt="x", stream=True)


def test_a_body_over_the_limit_gets_413(oa):
    with pytest.raises(openai.APIStatusError) as err:
        oa.images.generate(prompt="x" * (1 << 20))
    assert err.value.status_code == 413


# ----------------------------------------------------------------------------- errors on the app with API keys
@pytest.fixture(scope="module")
def keyed(serve_app, tiny_zoo):
    from ray import serve

    from deployments.app import build_app

    large = {
        "source": str(tiny_zoo.large),
        "device": "cpu",
        "num_inference_steps": 4,
        "default_size": 64,
        "max_size": 128,
        "profiled_latency_s": 1.0,
    }
    system = {
        "mode": "vanilla",
        "models": {"large": large},
        "monitor": {"gpu_budget": 1, "min_small": 0},
        "serving": {"request_timeout_s": 3, "model_id": "modm-vanilla"},
        "limits": {"max_steps": 400},
        "auth": {
            "api_keys": [{"sha256": hashlib.sha256(k.encode()).hexdigest(), "tenant": t} for k, t in KEYS.items()]
        },
        "backpressure": {"max_expected_latency_s": 1.5},  # one request in flight at 1 s each: the next one waits 2 s
    }
    options = {name: {"num_cpus": 0.1} for name in ("Router", "LargeModel", "ResponseStore")}
    serve.run(build_app({"system": system, "actor_options": options}), name="openai-keys", route_prefix="/openai")
    url = f"{serve_app}/openai"
    wait_healthy(url, timeout_s=240)
    yield url
    serve.delete("openai-keys", _blocking=False)


def keyed_client(url, key):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def test_keys_401_and_403(keyed):
    with keyed_client(keyed, "k-mallory") as mallory, pytest.raises(openai.AuthenticationError) as err:
        mallory.images.generate(prompt="x")
    assert err.value.response.headers["www-authenticate"].startswith("Bearer")
    with keyed_client(keyed, "k-oa-alice") as alice, pytest.raises(openai.PermissionDeniedError):
        alice.images.generate(prompt="x", extra_headers={"X-Tenant-Id": "bob"})


def test_links_open_without_a_key_but_not_with_another_tenants(keyed):
    with keyed_client(keyed, "k-oa-alice") as alice:
        result = alice.images.generate(prompt="a kite", model="modm-vanilla", response_format="url", quality="low")
    url = result.data[0].url
    assert urlsplit(url).path.startswith("/openai/v1/images/")  # the app's route prefix
    assert httpx.get(url).status_code == 200
    assert httpx.get(url, headers=AUTH_ALICE).status_code == 200
    assert httpx.get(url, headers={"Authorization": "Bearer k-oa-bob"}).status_code == 404


def test_429_with_retry_after_while_busy_then_504_at_the_timeout(keyed):
    outcome = {}

    def long_request():
        with keyed_client(keyed, "k-oa-alice") as alice:
            try:
                alice.images.generate(prompt="a slow one", extra_body={"steps": 400})
            except openai.APIStatusError as err:
                outcome["slow"] = err

    slow = threading.Thread(target=long_request)
    slow.start()
    deadline = time.monotonic() + 10
    while httpx.get(f"{keyed}/v1/stats", headers=AUTH_ALICE).json()["queue_depths"]["large"] < 1:
        assert time.monotonic() < deadline, "the slow request never reached the model"
        time.sleep(0.05)
    with keyed_client(keyed, "k-oa-bob") as bob, pytest.raises(openai.RateLimitError) as busy:
        bob.images.generate(prompt="x")
    slow.join(timeout=30)
    assert int(busy.value.response.headers["retry-after"]) >= 1
    assert outcome["slow"].status_code == 504 and outcome["slow"].body["type"] == "timeout"
