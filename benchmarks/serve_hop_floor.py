"""The floor of Serve's own per-request cost on this machine: HTTP through the proxy to an ingress that does nothing,
and each handle hop to a deployment that does nothing, so the overhead of the real app (serve_overhead.py) can be
read against what Serve itself costs.

Deploys a trivial FastAPI ingress and a trivial `Echo` deployment on a fresh local Ray and times, one request at a
time: GET /zero (HTTP in and out, no hop), GET /hops/{n} (n sequential handle calls to Echo with a few bytes) and
GET /bytes (one call carrying PNG-sized bytes each way). The per-hop cost is the slope over n. --app-transport
deploys them as the app runs its light deployments (deployments/app.py, deployments/handles.py).

    .venv/bin/python benchmarks/serve_hop_floor.py --requests 200 --out hop_floor.json [--app-transport]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import httpx
from fastapi import FastAPI
from ray import serve

app = FastAPI()


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.1})
class Echo:
    async def echo(self, data: bytes) -> bytes:
        return data


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.1})
@serve.ingress(app)
class Ingress:
    def __init__(self, echo, grpc: bool):
        self.echo = echo.options(_by_reference=False) if grpc else echo

    @app.get("/zero")
    async def zero(self) -> dict:
        return {"hops": 0}

    @app.get("/hops/{n}")
    async def hops(self, n: int) -> dict:
        for _ in range(n):
            await self.echo.echo.remote(b"x" * 32)
        return {"hops": n}

    @app.get("/bytes/{size}")
    async def payload(self, size: int) -> dict:
        data = await self.echo.echo.remote(os.urandom(size))
        return {"bytes": len(data)}


def median_ms(client: httpx.Client, path: str, requests: int) -> float:
    for _ in range(5):
        client.get(path)
    times = []
    for _ in range(requests):
        t = time.perf_counter()
        client.get(path).raise_for_status()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("hop_floor.json"))
    parser.add_argument(
        "--app-transport",
        action="store_true",
        help="as the app's light deployments run: handles over gRPC, code and routing on the replica's main loop",
    )
    args = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

    import ray

    from tools.local_cluster import free_port

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    echo, ingress = Echo, Ingress
    if args.app_transport:
        from deployments.app import SAME_LOOP_ENV

        same_loop = {"num_cpus": 0.1, "runtime_env": {"env_vars": SAME_LOOP_ENV}}
        echo, ingress = Echo.options(ray_actor_options=same_loop), Ingress.options(ray_actor_options=same_loop)
    serve.run(ingress.bind(echo.bind(), args.app_transport), name="floor", route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/zero", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.25)
    with httpx.Client(base_url=url, timeout=30) as client:
        result = {
            "http_no_hop_ms": median_ms(client, "/zero", args.requests),
            **{f"http_{n}_hops_ms": median_ms(client, f"/hops/{n}", args.requests) for n in (1, 3)},
            "http_1_hop_8kb_ms": median_ms(client, "/bytes/8192", args.requests),
        }
    ray.shutdown()
    result["per_hop_ms"] = (result["http_3_hops_ms"] - result["http_1_hops_ms"]) / 2
    result["load_average"] = os.getloadavg()
    result["app_transport"] = args.app_transport
    for key, value in result.items():
        print(f"{key:<20} {value:.2f}" if isinstance(value, float) else f"{key:<20} {value}")
    args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
