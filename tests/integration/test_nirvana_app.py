"""The NIRVANA baseline as a mode of the same app: a miss leaves latents after steps 5..25; a similar prompt
resumes the large model from them; an exact repeat resumes from step 25 and reproduces the miss's image."""

import base64
import time

import httpx
import pytest

from tools.local_cluster import wait_healthy

pytestmark = pytest.mark.ray

STEPS = 50  # T; NIRVANA snapshots after steps 5..25


@pytest.fixture(scope="module")
def nirvana(serve_app, tiny_zoo, tmp_path_factory):
    from ray import serve

    from deployments.app import build_app

    model = {
        "source": str(tiny_zoo.large),
        "device": "cpu",
        "num_inference_steps": STEPS,
        "default_size": 64,
        "max_size": 128,
    }
    system = {
        "mode": "nirvana",
        "models": {"large": model},
        "embedder": {"kind": "minilm", "device": "cpu"},
        "cache": {"directory": str(tmp_path_factory.mktemp("nirvana-cache"))},
        "policy": {"total_steps": STEPS},
        "monitor": {"gpu_budget": 1, "min_small": 0},
        "limits": {"max_steps": STEPS, "max_images": 2},
        "serving": {"request_timeout_s": 60},
    }
    serve.run(build_app({"system": system}), name="nirvana", route_prefix="/nirvana", blocking=False)
    url = f"{serve_app}/nirvana"
    wait_healthy(url, timeout_s=180)
    with httpx.Client(base_url=url, timeout=120) as client:
        yield client
    serve.delete("nirvana")


def generate(client, prompt, **extra):
    body = {"prompt": prompt, "size": "64x64", "seed": 5, **extra}
    response = client.post("/v1/images/generations", json=body, headers={"X-Tenant-Id": "it-nirvana"})
    assert response.status_code == 200, response.text
    return response.json()


def wait_cached(client, prompts, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get("/v1/stats").json()["cache"]["prompts"] >= prompts:
            return
        time.sleep(0.2)
    raise AssertionError(f"the latent cache never held {prompts} prompts")


def test_nirvana_resumes_the_large_model_from_cached_latents(nirvana):
    miss = generate(nirvana, "a medieval castle on a hill at sunset")
    assert miss["modm"]["mode"] == "nirvana" and miss["modm"]["hit"] is False and miss["modm"]["model"] == "large"
    wait_cached(nirvana, 1)
    stats = nirvana.get("/v1/stats").json()
    assert stats["cache"]["entries"] == 5 and stats["cache"]["admissions"] == 1

    repeat = generate(nirvana, "a medieval castle on a hill at sunset")
    assert repeat["modm"]["hit"] is True and repeat["modm"]["k"] == 25 and repeat["modm"]["model"] == "large"
    # Resuming the same prompt and seed from its own step-25 latents ends where the full run ended.
    first = base64.b64decode(miss["data"][0]["b64_json"])
    again = base64.b64decode(repeat["data"][0]["b64_json"])
    assert _max_pixel_difference(first, again) <= 1

    similar = generate(nirvana, "an old medieval castle on a hill during sunset")
    assert similar["modm"]["hit"] is True and similar["modm"]["k"] in (5, 10, 15, 20, 25)

    unrelated = generate(nirvana, "a bowl of ramen, studio photo")
    assert unrelated["modm"]["hit"] is False

    other_steps = generate(nirvana, "a medieval castle on a hill at sunset", steps=20)
    assert other_steps["modm"]["hit"] is False  # latents resume only a run of the same shape
    stats = nirvana.get("/v1/stats").json()
    assert stats["mode"] == "nirvana" and stats["hits"] == 2 and stats["k_mix"]


def _max_pixel_difference(png_a: bytes, png_b: bytes) -> int:
    import io

    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(png_a)), dtype=np.int16)
    b = np.asarray(Image.open(io.BytesIO(png_b)), dtype=np.int16)
    return int(np.abs(a - b).max())
