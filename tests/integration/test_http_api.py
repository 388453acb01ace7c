"""HTTP round trips through the Serve proxy: a miss, then a hit on a paraphrase; bad requests; stats and docs."""

import base64
import io

import pytest
from PIL import Image

from tests.integration.cache_admissions import settled_entries, wait_entries

pytestmark = pytest.mark.ray


def generate(client, prompt, tenant="it-http", **extra):
    body = {"prompt": prompt, "size": "64x64", "steps": 4, "seed": 1, **extra}
    return client.post("/v1/images/generations", json=body, headers={"X-Tenant-Id": tenant})


def test_miss_then_hit_on_a_paraphrase(client):
    before = settled_entries(client)
    first = generate(client, "a medieval castle on a hill at sunset")
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["modm"]["hit"] is False and body["modm"]["model"] == "large"
    image = Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"])))
    assert image.size == (64, 64) and image.format == "PNG"
    wait_entries(client, before + 1)

    second = generate(client, "an old medieval castle on a hill during sunset")
    assert second.status_code == 200, second.text
    decision = second.json()["modm"]
    assert decision["hit"] is True and decision["model"] == "small"
    assert decision["k"] > 0 and decision["strength"] == pytest.approx(1 - decision["k"] / 50)
    assert {"embed", "retrieve", "generate"} <= set(decision["timings_s"])
    assert body["modm"]["entry_id"] is None and isinstance(decision["entry_id"], int)

    # The image the hit was refined from: the first request's, served by id to the tenant that may retrieve it.
    source = client.get(f"/v1/cache/{decision['entry_id']}", headers={"X-Tenant-Id": "it-http"})
    assert source.status_code == 200 and source.headers["content-type"] == "image/png"
    assert source.content == base64.b64decode(body["data"][0]["b64_json"])
    for tenant, entry_id in (("it-other", decision["entry_id"]), ("it-http", 10**9)):
        refused = client.get(f"/v1/cache/{entry_id}", headers={"X-Tenant-Id": tenant})
        assert refused.status_code == 404 and refused.json()["error"]["type"] == "not_found"

    unrelated = generate(client, "a bowl of ramen noodles with chopsticks")
    assert unrelated.json()["modm"]["hit"] is False


def test_other_tenants_do_not_see_the_cached_image(client):
    before = settled_entries(client)
    generate(client, "a lighthouse in a storm at night", tenant="it-alice")
    wait_entries(client, before + 1)
    other = generate(client, "a lighthouse in a storm at night", tenant="it-bob")
    assert other.status_code == 200 and other.json()["modm"]["hit"] is False


def test_n_images_and_seeds(client):
    response = generate(client, "a field of sunflowers", tenant="it-n", n=2)
    assert response.status_code == 200
    data = response.json()["data"]
    assert len(data) == 2 and data[0]["b64_json"] != data[1]["b64_json"]


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ({"prompt": "x", "size": "65x64"}, 400, "width=65"),
        ({"prompt": "x", "size": "1024x1024"}, 400, "largest size"),
        ({"prompt": "x", "size": "big"}, 422, "size"),
        ({"prompt": "x", "steps": 0}, 422, "steps"),
        ({"prompt": "x", "steps": 9}, 400, "steps=9"),
        ({"prompt": "x", "n": 3}, 400, "n=3"),
        ({"prompt": ""}, 422, "prompt"),
        ({"prompt": "   "}, 422, "blank"),
        ({"prompt": "x" * 501}, 400, "501 characters"),
        ({"prompt": 3}, 422, "prompt"),
        ({}, 422, "prompt"),
        ({"prompt": "x", "response_format": "jpg"}, 422, "response_format"),
        ({"prompt": "x", "unexpected": 1}, 422, "unexpected"),
    ],
)
def test_bad_requests_get_a_reason(client, body, status, fragment):
    response = client.post("/v1/images/generations", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"] and error["type"]


def test_bad_tenant_header(client):
    response = client.post("/v1/images/generations", json={"prompt": "x"}, headers={"X-Tenant-Id": "../../etc"})
    assert response.status_code == 400 and "X-Tenant-Id" in response.json()["error"]["message"]


def test_not_json(client):
    response = client.post("/v1/images/generations", content=b"\xff\x00", headers={"Content-Type": "application/json"})
    assert response.status_code == 422


def test_stats_health_and_docs(client):
    assert client.get("/healthz").json()["status"] == "ok"
    stats = client.get("/v1/stats").json()
    for key in ("requests", "hits", "hit_rate", "k_mix", "queue_depths", "allocation", "cache"):
        assert key in stats
    assert stats["allocation"]["large"] + stats["allocation"]["small"] == 3
    spec = client.get("/openapi.json").json()
    assert "/v1/images/generations" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_batching_replicas_report_what_their_batches_cost(client):
    """The session app's models batch (conftest.BATCHING): after a generation the router's view of the large pool's
    costs, read from a replica over its handle, is in /v1/stats."""
    import time

    assert generate(client, "a red tractor in a wheat field", tenant="it-batching", n=2).status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        view = client.get("/v1/stats").json()["batching"]["large"]
        if view and view["seconds_per_image_step"]:
            break
        time.sleep(0.3)
    # The replica's passes over the whole session (other tests' requests too), each of 1..max_batch_size requests.
    assert view["max_batch_size"] == 4 and 1 <= view["mean_batch_size"] <= 4
    assert all(1 <= int(b) <= 4 and s > 0 for b, s in view["seconds_per_image_step"].items())


def test_metrics_reach_the_ray_metrics_endpoint(client, ray_cluster, metrics_port):
    import time

    import httpx

    client.post(
        "/v1/images/generations",
        json={"prompt": "a teapot on a table", "size": "64x64", "steps": 2},
        headers={"X-Tenant-Id": "it-metrics"},
    )
    wanted = (
        "modm_requests_total",
        "modm_request_latency_seconds",
        "modm_allocation_replicas",
        "modm_model_compute_seconds",
        "modm_model_batch_size",
    )
    deadline = time.monotonic() + 60
    text = ""
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        if all(name in text for name in wanted):
            return
        time.sleep(2)
    raise AssertionError(f"missing from /metrics: {[n for n in wanted if n not in text]}")


def test_grafana_dashboard_queries_metrics_the_app_exports():
    import json
    import re
    from pathlib import Path

    dashboard = json.loads((Path(__file__).parents[2] / "cluster" / "grafana-dashboard.json").read_text())
    exported = {
        "modm_requests_total",
        "modm_hits_by_k_total",
        "modm_request_latency_seconds",
        "modm_routing_overhead_seconds",
        "modm_queue_depth",
        "modm_admissions_dropped_total",
        "modm_allocation_replicas",
        "modm_allocation_target_large",
        "modm_window_request_rate_per_min",
        "modm_window_hit_rate",
        "modm_model_compute_seconds",
        "modm_model_batch_size",
    }
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names = re.findall(r"ray_(modm_[a-z_]+)", target["expr"])
            used |= {re.sub(r"_(bucket|sum|count)$", "", m) for m in names}
    assert used and used <= exported, used - exported
