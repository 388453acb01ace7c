"""Two Router replicas behind the Ingress, through real HTTP: they admit by the cluster's load, not their own, and
a Router killed under load loses no request (its requests are re-driven on the other one).

One small vanilla app for the module: one LargeModel replica whose declared profile (1 s a request) and latency bound
(6.5 s) let six requests in flight in the cluster, whichever Router holds them. Six is also more than a closed loop
of 3 clients can count, even while a killed Router's last report (and so its re-driven requests twice) still counts
for its time to live, so the kill test sees no admission refusal.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from test_faults import CLIENT_TIMEOUT_S, HttpLoad, assert_every_request_answered, replica_actors, report

from tools.local_cluster import wait_healthy

pytestmark = pytest.mark.ray

APP = "modm-routers"
CLUSTER_CAPACITY = 6  # floor(6.5 s bound / 1 s profile) rounds x 1 replica
REPORT_INTERVAL_S = 0.1
HOLD_STEPS = 40  # the first holder runs this long on the one model replica slot; the others queue behind it


@pytest.fixture(scope="module")
def routers_app(serve_app, tiny_zoo):
    from ray import serve

    from deployments.app import build_app

    system = {
        "mode": "vanilla",
        "models": {
            "large": {
                "source": str(tiny_zoo.large),
                "device": "cpu",
                "num_inference_steps": 4,
                "default_size": 64,
                "max_size": 64,
                "profiled_latency_s": 1.0,
            }
        },
        "monitor": {"gpu_budget": 1, "min_small": 0},
        "limits": {"max_steps": HOLD_STEPS},
        "backpressure": {"max_expected_latency_s": CLUSTER_CAPACITY + 0.5},
        "serving": {"request_timeout_s": 60, "router_replicas": 2, "load_report_interval_s": REPORT_INTERVAL_S},
    }
    options = {name: {"num_cpus": 0.1} for name in ("Ingress", "Router", "LoadBoard", "LargeModel", "ResponseStore")}
    serve.run(
        build_app({"system": system, "actor_options": options}), name=APP, route_prefix="/routers", blocking=False
    )
    url = f"{serve_app}/routers"
    wait_healthy(url, timeout_s=240)
    yield url
    serve.delete(APP)


def board_reports() -> dict[str, dict[str, int]]:
    """Each Router's own requests in flight per pool, by Serve replica id, from the LoadBoard. (Not /v1/stats: Serve
    sends a stats call to the less busy Router.)"""
    from ray import serve

    return serve.get_deployment_handle("LoadBoard", app_name=APP).by_router.remote().result(timeout_s=30)


def generate(client: httpx.Client, i: int, steps: int = 4) -> httpx.Response:
    return client.post(
        "/v1/images/generations", json={"prompt": f"a harbour at dawn, view {i}", "size": "64x64", "steps": steps}
    )


def test_routers_admit_by_the_clusters_load_not_their_own(routers_app):
    """Six requests fill the cluster (three on each Router, as Serve balances them): one long one on the model
    replica and five queued behind it. One more is refused with 429 on whichever Router it lands; by its own counts
    (three), either Router would have let it in."""
    with httpx.Client(base_url=routers_app, timeout=CLIENT_TIMEOUT_S) as client, ThreadPoolExecutor(8) as pool:
        holders = [pool.submit(generate, client, 0, HOLD_STEPS)]
        deadline = time.monotonic() + 30
        while client.get("/v1/stats").json()["queue_depths"]["large"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        holders += [pool.submit(generate, client, i) for i in range(1, CLUSTER_CAPACITY)]
        views = []
        while time.monotonic() < deadline:  # until both Routers' reports show the six (and a report more)
            views = [client.get("/v1/stats").json() for _ in range(4)]
            if all(v["queue_depths"]["large"] == CLUSTER_CAPACITY for v in views):
                break
            time.sleep(REPORT_INTERVAL_S)
        time.sleep(2 * REPORT_INTERVAL_S)
        probes = [generate(client, 100 + i) for i in range(4)]
        own = {router: counts["large"] for router, counts in board_reports().items()}
        held = [h.result() for h in holders]

    counts = {
        "holders_served": sum(r.status_code == 200 for r in held),
        "probes": [p.status_code for p in probes],
        "own_in_flight_by_router": own,
    }
    print(f"\nSKEWED LOAD: {counts}")
    assert counts["holders_served"] == CLUSTER_CAPACITY, [r.text[:200] for r in held if r.status_code != 200]
    assert all(v["queue_depths"]["large"] == CLUSTER_CAPACITY for v in views), views
    assert len(own) == 2 and all(n < CLUSTER_CAPACITY for n in own.values()), own  # neither held it all
    for probe in probes:
        assert probe.status_code == 429, probe.text[:300]
        assert probe.headers["Retry-After"].isdigit() and probe.json()["error"]["type"] == "overloaded"


def busy_router(routers: list[dict], timeout_s: float = 30.0) -> dict:
    """The replica actor of a Router holding two requests or more, as its last load report says."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for router_id, counts in board_reports().items():
            if counts.get("large", 0) >= 2:
                return next(r for r in routers if r["Name"].endswith(f"#{router_id}"))
        time.sleep(REPORT_INTERVAL_S / 2)
    raise AssertionError(f"no Router held two requests within {timeout_s:.0f}s")


def test_a_router_killed_under_load_loses_no_request(routers_app, record_property):
    import ray

    routers = replica_actors(APP, "Router")
    assert len(routers) == 2, routers
    before = httpx.get(f"{routers_app}/v1/stats").json()["ingress"]
    load = HttpLoad(
        routers_app,
        total=12,
        concurrency=3,
        body=lambda i: {"prompt": f"a lighthouse in fog, view {i}", "size": "64x64", "steps": 6, "seed": i},
    ).start()
    load.wait_for(3)
    victim = busy_router(routers)
    ray.kill(ray.get_actor(victim["Name"], namespace="serve"))
    tally = load.join()
    after = httpx.get(f"{routers_app}/v1/stats").json()["ingress"]
    counts = {
        **tally.row(),
        "served": tally.completed,
        "redriven": after["redriven"] - before["redriven"],
        "router_unavailable": after["router_unavailable"] - before["router_unavailable"],
    }
    report(record_property, "router_killed", counts)
    assert_every_request_answered(tally)
    assert counts["redriven"] >= 1, counts  # the killed Router held requests (3 clients over 2 Routers)
    assert tally.completed == tally.sent and counts["router_unavailable"] == 0, counts
