"""Reader replicas of the image cache: the builder binds them when cache.read_replicas > 0, and through real HTTP a
reader killed under load fails no request and the hits go on.

The HTTP test deploys a small second app beside the session app (its own CacheIndex writer, two CacheReaders and a
Router) whose Router calls the session app's model pools, embedder and response store, so it starts three light
replicas instead of a whole system."""

from __future__ import annotations

import json
import secrets
import threading
import time

import httpx
import pytest
from test_faults import replica_actors

from deployments.app import AppArgs, build_app, required_resources

APP = "modm-readers"
PREFIX = "/readers"
TENANT = "it-readers"
SUBJECTS = [
    "a red fox sleeping in fresh snow",
    "a steam locomotive crossing a stone bridge",
    "a lighthouse on a cliff during a thunderstorm",
    "a bowl of ramen with a soft boiled egg",
]
REQUESTS, CLIENTS, KILL_AFTER = 24, 3, 6
SYSTEM = {"models": {"large": {"source": "a"}, "small": {"source": "b"}}, "monitor": {"gpu_budget": 4}}


def test_the_builder_binds_readers_only_when_asked():
    from deployments.cache_index import CacheHandles

    def router_cache(read_replicas: int):
        system = {**SYSTEM, "cache": {"read_replicas": read_replicas}}
        router = build_app({"system": system, "check_resources": False})._bound_deployment.init_args[0]  # Ingress's
        return router._bound_deployment.init_args[4], AppArgs(system=system)

    alone, args = router_cache(0)
    assert alone._bound_deployment.name == "CacheIndex"
    split, args2 = router_cache(2)
    assert isinstance(split, CacheHandles) and split.writer._bound_deployment.name == "CacheIndex"
    readers = split.readers._bound_deployment
    assert readers.name == "CacheReader" and readers.num_replicas == 2
    extra_cpus = (
        required_resources(args2.system_config(), args2)["CPU"] - required_resources(args.system_config(), args)["CPU"]
    )
    assert extra_cpus == pytest.approx(2 * 0.5)


@pytest.fixture
def readers_app(serve_app, tiny_zoo, tmp_path):
    """The second app: its writer, 2 readers following it every 0.1 s, and a Router over the session app's pools."""
    from ray import serve

    from deployments.cache_index import CacheHandles, CacheIndexServer, CacheReaderServer
    from deployments.http_ingress import Ingress
    from deployments.router import Router

    model = {"device": "cpu", "num_inference_steps": 4, "default_size": 64, "max_size": 128}
    system = {
        "mode": "modm",
        "models": {
            "large": {"source": str(tiny_zoo.large), **model},
            "small": {"source": str(tiny_zoo.small), "guidance_scale": 7.5, **model},
        },
        "embedder": {"kind": "minilm", "device": "cpu"},
        "cache": {"directory": str(tmp_path / "cache"), "read_replicas": 2, "follow_interval_s": 0.1},
        "policy": {"k_table": "minilm-text"},
        "monitor": {"gpu_budget": 3, "min_small": 1},
        "serving": {"request_timeout_s": 60},
    }
    args = AppArgs(system=system)
    cache_config, dim = args.system_config().cache.model_dump(mode="json"), 384  # MiniLM

    def light(cls, name: str, **options):
        return serve.deployment(cls, name=name, ray_actor_options=args.options_for(name), **options)

    session = {name: serve.get_deployment_handle(name, app_name="modm") for name in ("LargeModel", "SmallModel")}
    session.update({name: serve.get_deployment_handle(name, app_name="modm") for name in ("Embedder", "ResponseStore")})
    writer = light(CacheIndexServer, "CacheIndex").bind(cache_config, dim)
    readers = light(CacheReaderServer, "CacheReader", num_replicas=2).bind(cache_config, dim)
    router = light(Router, "Router").bind(
        system,
        session["LargeModel"],
        session["SmallModel"],
        session["Embedder"],
        CacheHandles(writer=writer, readers=readers),
        None,  # no monitor: the session app's monitor counts only its own router
        store=session["ResponseStore"],
        signing_key=secrets.token_hex(32),
    )
    ingress = light(Ingress, "Ingress").bind(router, args.system_config().limits.model_dump(mode="json"), "modm")
    serve.run(ingress, name=APP, route_prefix=PREFIX, blocking=False)
    url = f"{serve_app}{PREFIX}"
    from tools.local_cluster import wait_healthy

    wait_healthy(url, timeout_s=180)
    yield {"url": url, "session": session}
    serve.delete(APP, _blocking=False)


def test_a_reader_killed_under_load_fails_no_request_and_hits_go_on(readers_app, record_property):
    import ray
    from ray import serve

    from modm.policy.tenancy import cache_scope

    url, embedder = readers_app["url"], readers_app["session"]["Embedder"]
    writer = serve.get_deployment_handle("CacheIndex", app_name=APP)
    readers = serve.get_deployment_handle("CacheReader", app_name=APP)
    namespace = cache_scope(TENANT, ()).write
    with httpx.Client(timeout=60) as client:
        seed = client.post(f"{url}/v1/images/generations", json={"prompt": "seed image", "size": "64x64", "steps": 4})
        assert seed.status_code == 200, seed.text
    png = __import__("base64").b64decode(seed.json()["data"][0]["b64_json"])
    entry_ids = []
    for prompt in SUBJECTS:  # each subject's own prompt is its query: a sure hit while the entry is there
        key = embedder.embed_for_cache.remote(png, prompt).result(timeout_s=60)
        entry_ids.append(writer.add.remote(png, key, prompt, namespace, "large", 0).result(timeout_s=60))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # both readers (the handle picks either) have followed the admissions
        if all(readers.cached_prompts.remote(namespace).result(timeout_s=30) == sorted(SUBJECTS) for _ in range(6)):
            break
        time.sleep(0.1)

    outcomes: list[dict] = []
    lock, killed_at = threading.Lock(), [None]

    def client_loop(worker: int) -> None:
        with httpx.Client(timeout=90) as client:
            for i in range(worker, REQUESTS, CLIENTS):
                body = {"prompt": SUBJECTS[i % len(SUBJECTS)], "size": "64x64", "steps": 4, "seed": i}
                try:
                    response = client.post(f"{url}/v1/images/generations", json=body, headers={"X-Tenant-Id": TENANT})
                    outcome = {"status": response.status_code}
                    if response.status_code == 200:
                        outcome["hit"] = response.json()["modm"]["hit"]
                except httpx.HTTPError as err:
                    outcome = {"status": type(err).__name__}
                with lock:
                    outcome["after_kill"] = killed_at[0] is not None
                    outcomes.append(outcome)

    reads = {"sent": 0, "ok": 0, "failed": []}
    generating = threading.Event()
    generating.set()

    def read_loop() -> None:
        """GET /v1/cache/{id}: only the readers' work, so reads are in flight on the replica when it is killed."""
        with httpx.Client(timeout=90) as client:
            while generating.is_set():
                entry_id = entry_ids[reads["sent"] % len(entry_ids)]
                reads["sent"] += 1
                try:
                    response = client.get(f"{url}/v1/cache/{entry_id}", headers={"X-Tenant-Id": TENANT})
                    if response.status_code == 200 and response.content == png:
                        reads["ok"] += 1
                    else:
                        reads["failed"].append(response.status_code)
                except httpx.HTTPError as err:
                    reads["failed"].append(type(err).__name__)

    threads = [threading.Thread(target=client_loop, args=(w,)) for w in range(CLIENTS)]
    reader_thread = threading.Thread(target=read_loop)
    for thread in [*threads, reader_thread]:
        thread.start()
    while len(outcomes) < KILL_AFTER and any(t.is_alive() for t in threads):
        time.sleep(0.02)
    victim = replica_actors(APP, "CacheReader")[0]
    ray.kill(ray.get_actor(victim["Name"], namespace="serve"))
    with lock:
        killed_at[0] = time.monotonic()
    for thread in threads:
        thread.join(timeout=300)
    generating.clear()
    reader_thread.join(timeout=120)
    stats = httpx.get(f"{url}/v1/stats", timeout=30).json()["cache"]

    after = [o for o in outcomes if o["after_kill"]]
    counts = {
        "sent": REQUESTS,
        "answered": len(outcomes),
        "ok": sum(o["status"] == 200 for o in outcomes),
        "hits": sum(o.get("hit") is True for o in outcomes),
        "after_kill": len(after),
        "hits_after_kill": sum(o.get("hit") is True for o in after),
        "failed": [o for o in outcomes if o["status"] != 200],
        "image_reads": reads["sent"],
        "image_reads_ok": reads["ok"],
        "image_reads_failed": reads["failed"],
        "reader_retries": stats["reader_retries"],
        "writer_fallbacks": stats["writer_fallbacks"],
    }
    print(f"\nREADER KILL COUNTS: {json.dumps(counts)}")
    record_property("fault_counts", json.dumps({"cache_reader_killed": counts}))
    assert counts["answered"] == REQUESTS and not counts["failed"], counts
    assert reads["ok"] == reads["sent"] > 0, counts
    assert counts["hits"] == REQUESTS, counts  # every lookup answered, by a live reader (or the writer)
    assert counts["hits_after_kill"] >= REQUESTS - KILL_AFTER - CLIENTS, counts
