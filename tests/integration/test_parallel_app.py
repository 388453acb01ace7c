"""A LargeModel configured with `parallel: {method, world_size}` serves through a 2-rank actor group over gloo."""

import base64
import io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.ray


def test_a_parallel_large_model_serves_the_same_image_as_one_device(parallel_app):
    from modm.config import ModelSpec
    from modm.generation import DiffusionGenerator, GenerationRequest

    base, large = parallel_app["url"], parallel_app["large"]
    body = {"prompt": "a lighthouse in a storm", "size": "64x64", "seed": 5}
    response = httpx.post(f"{base}/v1/images/generations", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["modm"]["model"] == "large"
    served = np.asarray(
        Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"]))), dtype=np.int16
    )

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: float reductions then add up in the same order
    try:
        single = DiffusionGenerator.from_spec(ModelSpec(**{**large, "parallel": {}}), "large")
        reference = np.asarray(
            single.txt2img(GenerationRequest("a lighthouse in a storm", 64, 64, 3, 5)), dtype=np.int16
        )
    finally:
        torch.set_num_threads(threads)
    diff = np.abs(served - reference)
    # Synchronous DistriFusion matches one device to float rounding (1e-5 in the gloo tests); after the
    # random tiny VAE and 8-bit PNG that is at most a few levels on a few pixels.
    assert diff.mean() < 0.5 and np.mean(diff > 2) < 0.01, (diff.mean(), diff.max())

    bad = httpx.post(f"{base}/v1/images/generations", json={**body, "size": "48x48"}, timeout=30)
    assert bad.status_code == 400 and "multiple of 32" in bad.json()["error"]["message"]


# ------------------------------------------------------------------ Serve-native multi-device replicas (issue 13)
def _alive(class_name: str) -> list[dict]:
    import ray._private.state

    return [
        a for a in ray._private.state.actors(actor_state_name="ALIVE").values() if a["ActorClassName"] == class_name
    ]


def _replica_and_ranks(app: str) -> tuple[dict, list[dict]]:
    (replica,) = _alive(f"ServeReplica:{app}:LargeModel")
    ranks = [a for a in _alive("_RankWorker") if a["OwnerAddress"] == replica["Address"]]
    return replica, ranks


def test_the_replica_placement_group_holds_its_rank_bundles(parallel_app):
    import ray
    from ray import serve

    placement = (
        serve.get_deployment_handle("LargeModel", app_name=parallel_app["app"]).placement.remote().result(timeout_s=60)
    )
    pg_id = placement["replica"]
    assert pg_id and placement["ranks"] == [pg_id, pg_id], placement  # the ranks run in the replica's group
    table = ray.util.placement_group_table()[pg_id]
    assert table["strategy"] == "PACK" and len(table["bundles"]) == 3, table  # the replica's bundle + 2 ranks
    assert all(bundle.get("CPU") == 1 for index, bundle in table["bundles"].items() if index > 0), table


def test_a_cancelled_parallel_request_stops_every_rank_and_frees_the_group(parallel_app):
    import json
    import socket
    import time

    from ray import serve

    base = parallel_app["url"]
    large = serve.get_deployment_handle("LargeModel", app_name=parallel_app["app"])
    before = large.stats.remote().result(timeout_s=60)
    host, port = base.removeprefix("http://").split("/")[0].split(":")
    body = json.dumps({"prompt": "a very long parallel generation", "size": "64x64", "steps": 200}).encode()
    sock = socket.create_connection((host, int(port)))  # a raw client, so the test decides when it goes away
    sock.sendall(
        f"POST /parallel/v1/images/generations HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
        f"Content-Type: application/json\r\n\r\n".encode()
        + body
    )
    time.sleep(3.0)  # the long request is running on both ranks
    sock.close()
    disconnected = time.perf_counter()
    after = httpx.post(f"{base}/v1/images/generations", json={"prompt": "a short one", "size": "64x64"}, timeout=120)
    freed_after_s = time.perf_counter() - disconnected
    stats = large.stats.remote().result(timeout_s=60)
    print(f"\nparallel cancel: the next request was answered {freed_after_s:.1f}s after the disconnect; {stats}")
    assert after.status_code == 200, after.text
    assert stats["interrupted"] - before["interrupted"] == 1, (before, stats)
    assert stats["generations"] - before["generations"] == 2, (before, stats)
    # Rank 0 reports the steps each generation ran: the short one's 3, and the long one's until its stop.
    steps_of_long = stats["denoising_steps"] - before["denoising_steps"] - parallel_app["large"]["num_inference_steps"]
    assert 0 < steps_of_long < 200, (before, stats)
    assert freed_after_s < 20  # 200 steps on 2 ranks take far longer


def test_a_parallel_model_refuses_to_refine_by_name(parallel_app):
    from PIL import Image
    from ray import serve

    from modm.generation import UnsupportedOperationError
    from modm.images import png_bytes

    large = serve.get_deployment_handle("LargeModel", app_name=parallel_app["app"])
    png = png_bytes(Image.new("RGB", (64, 64)))
    with pytest.raises(UnsupportedOperationError, match="large model runs distrifusion .* does not do img2img"):
        large.refine.remote("a lighthouse", png, 0.5, 64, 64, 3, 0).result(timeout_s=60)
    assert large.info.remote().result(timeout_s=60)["operations"] == ["txt2img"]


def test_killing_the_replica_removes_its_rank_actors(parallel_app):
    import time

    import ray

    from tools.local_cluster import wait_healthy

    replica, ranks = _replica_and_ranks(parallel_app["app"])
    assert len(ranks) == 2
    ray.kill(ray.get_actor(replica["Name"], namespace="serve"), no_restart=True)
    deadline = time.monotonic() + 60
    rank_ids = {r["ActorID"] for r in ranks}
    while time.monotonic() < deadline and rank_ids & {a["ActorID"] for a in _alive("_RankWorker")}:
        time.sleep(0.5)
    assert not rank_ids & {a["ActorID"] for a in _alive("_RankWorker")}, "the dead replica's ranks live on"
    wait_healthy(parallel_app["url"], timeout_s=240)  # Serve starts a replacement with a fresh group
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        alive = _alive(f"ServeReplica:{parallel_app['app']}:LargeModel")
        if alive and alive[0]["ActorID"] != replica["ActorID"] and len(_replica_and_ranks(parallel_app["app"])[1]) == 2:
            break
        time.sleep(1)
    response = httpx.post(
        f"{parallel_app['url']}/v1/images/generations",
        json={"prompt": "after the replacement", "size": "64x64"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
