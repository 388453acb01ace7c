"""The monitor really moves replicas: hit-heavy load shifts the split toward SmallModel, miss-heavy load back; and
a move loses no generation: no request fails and the router retries none (a replica picked for removal finishes its
in-flight work within its graceful-shutdown timeout, which covers a generation)."""

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytestmark = pytest.mark.ray


def replicas(name: str) -> int:
    from ray import serve

    deployment = serve.status().applications["modm"].deployments[name]
    return deployment.replica_states.get("RUNNING", 0)


def drive(base_url: str, prompts, tenants, until, timeout_s: float, workers: int = 3) -> dict:
    stop = threading.Event()
    counts = {"sent": 0, "ok": 0, "failed": []}
    lock = threading.Lock()

    def worker(i: int):
        with httpx.Client(base_url=base_url, timeout=60) as c:
            while not stop.is_set():
                with lock:
                    prompt, tenant = next(prompts), next(tenants)
                    counts["sent"] += 1
                r = c.post(
                    "/v1/images/generations",
                    json={"prompt": prompt, "size": "64x64", "steps": 2},
                    headers={"X-Tenant-Id": tenant},
                )
                with lock:
                    counts["ok"] += r.status_code == 200
                    if r.status_code != 200:
                        counts["failed"].append((r.status_code, r.text[:200]))

    deadline = time.monotonic() + timeout_s
    with ThreadPoolExecutor(workers) as pool:
        for i in range(workers):
            pool.submit(worker, i)
        try:
            while time.monotonic() < deadline and not until():
                time.sleep(1)
        finally:
            stop.set()
    counts["reached"] = until()
    return counts


def test_hit_heavy_then_miss_heavy_load_moves_the_split(serve_app, client):
    assert (replicas("LargeModel"), replicas("SmallModel")) == (2, 1)  # initial: N - min_small large

    same = itertools.repeat("a quiet harbor with fishing boats at dawn")
    hits = drive(
        serve_app,
        same,
        itertools.repeat("it-actuation-hits"),
        until=lambda: replicas("LargeModel") == 1 and replicas("SmallModel") == 2,
        timeout_s=150,
    )
    stats = client.get("/v1/stats").json()
    assert hits["reached"], (hits, stats, replicas("LargeModel"), replicas("SmallModel"))
    assert hits["failed"] == [] and stats["retries"] == 0 and stats["errors"] == 0, (hits, stats)

    # Retrieval is scoped to the tenant: a fresh tenant per request is a guaranteed miss.
    fresh_tenants = (f"it-actuation-miss-{i}" for i in itertools.count())
    misses = drive(
        serve_app,
        same,
        fresh_tenants,
        until=lambda: replicas("LargeModel") == 2 and replicas("SmallModel") == 1,
        timeout_s=150,
    )
    stats = client.get("/v1/stats").json()
    assert misses["reached"], (misses, stats)
    assert misses["failed"] == [] and stats["retries"] == 0 and stats["errors"] == 0, (misses, stats)
    # R counted every request that arrived (at arrival, not completion).
    assert stats["arrivals"] >= hits["sent"] + misses["sent"]
    history = stats["allocation"]
    assert history["large"] + history["small"] == 3
