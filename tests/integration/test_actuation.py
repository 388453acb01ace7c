"""The monitor really moves replicas: hit-heavy load shifts the split toward SmallModel, miss-heavy load back; and
a move loses no generation: no request fails and the router retries none (a replica picked for removal finishes its
in-flight work within its graceful-shutdown timeout, which covers a generation)."""

import itertools
import time

import pytest

from deployments.usage_log import departed_usage
from tests.integration.serve_load import drive
from tests.integration.serve_load import running_replicas as replicas

pytestmark = pytest.mark.ray

# A move waits for a new replica to start (import torch and diffusers, load the pipeline) while the old ones serve:
# measured up to about 200 s on a loaded 2-core machine, so each phase gets more than that.
MOVE_TIMEOUT_S = 240  # three phases and the 90 s usage wait stay under pytest's 900 s per-test timeout


def test_hit_heavy_then_miss_heavy_load_moves_the_split(serve_app, client):
    same = itertools.repeat("a quiet harbor with fishing boats at dawn")
    # Retrieval is scoped to the tenant: a fresh tenant per request is a guaranteed miss.
    fresh_tenants = (f"it-actuation-miss-{i}" for i in itertools.count())
    # Start from the miss-heavy split (N - min_small large), whatever the tests before left.
    start = drive(
        serve_app,
        same,
        fresh_tenants,
        until=lambda: replicas("LargeModel") == 2 and replicas("SmallModel") == 1,
        timeout_s=MOVE_TIMEOUT_S,
    )
    assert start["reached"], start
    # The session app's counts are cumulative: earlier tests (a killed replica) may have retried or failed some.
    before = client.get("/v1/stats").json()

    def no_new_failures(stats: dict) -> bool:
        return stats["retries"] == before["retries"] and stats["errors"] == before["errors"]

    hits = drive(
        serve_app,
        same,
        itertools.repeat("it-actuation-hits"),
        until=lambda: replicas("LargeModel") == 1 and replicas("SmallModel") == 2,
        timeout_s=MOVE_TIMEOUT_S,
    )
    stats = client.get("/v1/stats").json()
    assert hits["reached"], (hits, stats, replicas("LargeModel"), replicas("SmallModel"))
    assert hits["failed"] == [] and no_new_failures(stats), (hits, stats, before)
    # The LargeModel replica the monitor stopped kept its usage for the cost per image (deployments/usage_log.py).
    deadline = time.monotonic() + 90
    while not departed_usage("modm", ["LargeModel"]) and time.monotonic() < deadline:
        time.sleep(1)
    departed = departed_usage("modm", ["LargeModel"])
    assert departed and all(u["busy_s"] >= 0 and u["up_s"] > 0 for u in departed), departed

    misses = drive(
        serve_app,
        same,
        fresh_tenants,
        until=lambda: replicas("LargeModel") == 2 and replicas("SmallModel") == 1,
        timeout_s=MOVE_TIMEOUT_S,
    )
    stats = client.get("/v1/stats").json()
    assert misses["reached"], (misses, stats)
    assert misses["failed"] == [] and no_new_failures(stats), (misses, stats, before)
    # R counted every request that arrived (at arrival, not completion).
    assert stats["arrivals"] - before["arrivals"] >= hits["sent"] + misses["sent"]
    history = stats["allocation"]
    assert history["large"] + history["small"] == 3
