"""Cold start, per-request system overhead and memory of the local Serve app.

Deploys the local config with 1-step models on a fresh local Ray, measures the time from `serve.run` to the first
healthy answer, then sends requests one at a time (misses: a fresh tenant each; hits: the same prompt again) and
splits each end-to-end latency into model compute (measured in-process on the same tiny models) and system
overhead (HTTP proxy + Ingress + Router + embedder + cache index + handle hops); each request's compute is timed
right after it, so that both see the machine's load of the moment. Memory is the PSS of all Ray processes.

    .venv/bin/python benchmarks/serve_overhead.py --requests 100 --out overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


# The embedder configs measured: MiniLM (the embedded default's, in bfloat16: half its float32 pass on a CPU with
# bf16 instructions), and local.yaml's world CLIP retrieving text->text, so that the tiny zoo's images (noise to it)
# still give hits; a request runs the same text tower either way.
EMBEDDERS = {
    "minilm": {"kind": "minilm", "device": "cpu", "dtype": "bfloat16"},
    "world-clip": {
        "kind": "hf_clip",
        "model": str(Path(__file__).resolve().parents[1] / "modm" / "world" / "weights" / "clip"),
        "retrieval": "text-text",
        "device": "cpu",
    },
}

# What each request is split into: e2e = ingress + embed + retrieve + model call; overhead = e2e - model compute.
METRICS = ("e2e_s", "overhead_s", "routing_s", "embed_s", "retrieve_s", "model_call_s", "ingress_s")


def stages(e2e_s: float, timings_s: dict[str, float], compute_s: float) -> dict[str, float]:
    """One request's stages from the router's own timings (the response's modm.timings_s): embed (the embedder's
    round trip), retrieve (cache query, and the hit's image fetch), model call less the model's in-process compute
    (the handle hop, queueing, PNG encode/decode in the replica), and ingress (everything else: HTTP client ->
    proxy -> Ingress -> Router and back, body validation, base64 and JSON of the answer)."""
    embed, retrieve, generate = (timings_s.get(key, 0.0) for key in ("embed", "retrieve", "generate"))
    return {
        "e2e_s": e2e_s,
        "overhead_s": e2e_s - compute_s,
        "routing_s": embed + retrieve,
        "embed_s": embed,
        "retrieve_s": retrieve,
        "model_call_s": generate - compute_s,
        "ingress_s": e2e_s - embed - retrieve - generate,
    }


def compute_runners(zoo: Path, size: int) -> dict[str, Callable[[], object]]:
    """The replicas' model compute, in this process: per role, one warmed call of what its replica runs."""
    import torch
    from PIL import Image

    from modm.config import ModelSpec
    from modm.generation import DiffusionGenerator, GenerationRequest

    torch.set_num_threads(1)  # a model replica gets one CPU
    req = GenerationRequest("a dog riding a bike", size, size, 1, 0)
    runners = {}
    for role in ("large", "small"):
        gen = DiffusionGenerator.from_spec(ModelSpec(source=str(zoo / role), device="cpu", default_size=size), role)
        runners[role] = (
            (lambda g=gen: g.txt2img(req))
            if role == "large"
            else (lambda g=gen: g.img2img(req, Image.new("RGB", (size, size)), 1.0))
        )
        runners[role]()
    return runners


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ray_memory_mb() -> dict[str, float]:
    total, by_kind = 0.0, {}
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if not any(
            k in cmd for k in ("ray::", "raylet", "gcs_server", "ray/dashboard", "default_worker", "ray/_private")
        ):
            continue
        try:
            pss = proc.memory_full_info().pss / 2**20
        except (psutil.Error, AttributeError):
            continue
        kind = cmd.split()[0].split("/")[-1][:40] if not cmd.startswith("ray::") else cmd.split()[0][:40]
        by_kind[kind] = by_kind.get(kind, 0.0) + pss
        total += pss
    return {"total_mb": total, **{k: v for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])[:12]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--zoo", type=Path, default=Path(".modm/zoo"))
    parser.add_argument("--out", type=Path, default=Path("serve_overhead.json"))
    parser.add_argument("--embedder", choices=sorted(EMBEDDERS), default="minilm")
    args = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

    import ray
    from ray import serve

    from deployments.app import build_app
    from tools.local_cluster import free_port, wait_healthy
    from modm.config import load_config
    from modm.demo import ensure_zoo
    from tools.serve_configs import tiny_config_path

    ensure_zoo(load_config(tiny_config_path()), args.zoo)
    runners = compute_runners(args.zoo, args.size)
    compute = {role: statistics.median(seconds(run) for _ in range(20)) for role, run in runners.items()}
    model = {"device": "cpu", "num_inference_steps": 1, "default_size": args.size, "max_size": 512}
    system = {
        "mode": "modm",
        "models": {
            "large": {"source": str(args.zoo / "large"), **model},
            "small": {"source": str(args.zoo / "small"), **model},
        },
        "embedder": EMBEDDERS[args.embedder],
        "cache": {"directory": str(Path(".modm/bench-overhead-cache").resolve())},
        "policy": {"k_table": "minilm-text"},
        "monitor": {"gpu_budget": 3},
    }
    import shutil

    shutil.rmtree(system["cache"]["directory"], ignore_errors=True)

    t0 = time.perf_counter()
    load_before = os.getloadavg()
    ray.init(num_cpus=8, include_dashboard=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    t1 = time.perf_counter()
    serve.run(build_app({"system": system}), name="modm", route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, poll_s=0.25)
    cold = {"ray_init_s": t1 - t0, "deploy_to_healthy_s": time.perf_counter() - t1}

    rows = {"miss": [], "hit": []}
    with httpx.Client(base_url=url, timeout=120) as client:
        body = {"prompt": "a lighthouse in a storm at night", "size": f"{args.size}x{args.size}"}
        client.post("/v1/images/generations", json=body, headers={"X-Tenant-Id": "warm"})  # warm every hop
        for i in range(args.requests):
            kind = "miss" if i % 2 == 0 else "hit"
            tenant = f"t{i}" if kind == "miss" else f"t{i - 1}"  # a hit re-asks the previous miss's prompt
            if kind == "hit":  # let the admission land first
                deadline = time.monotonic() + 10
                while client.get("/v1/stats").json()["pending_admissions"] and time.monotonic() < deadline:
                    time.sleep(0.02)
            t = time.perf_counter()
            r = client.post("/v1/images/generations", json=body, headers={"X-Tenant-Id": tenant})
            e2e = time.perf_counter() - t
            info = r.json()["modm"]
            # The model's compute, timed here right after the request: the two share this machine's load of the
            # moment, which on 2 busy cores moves more between minutes than the overhead being measured.
            paired = seconds(runners[info["model"]])
            rows[kind].append({**stages(e2e, info["timings_s"], paired), "hit": info["hit"]})
    memory = ray_memory_mb()
    ray.shutdown()

    table = []
    for kind, items in rows.items():
        for metric in METRICS:
            values = [x[metric] for x in items]
            table.append(
                {
                    "requests": kind,
                    "metric": metric,
                    "n": len(values),
                    "p50_ms": 1e3 * percentile(values, 50),
                    "p95_ms": 1e3 * percentile(values, 95),
                }
            )
    result = {
        "embedder": system["embedder"],
        "cold_start": cold,
        "compute_s": compute,
        "table": table,
        "memory_pss_mb": memory,
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "hit_fraction_of_hit_requests": sum(x["hit"] for x in rows["hit"]) / max(1, len(rows["hit"])),
    }
    print(f"cold start: ray.init {cold['ray_init_s']:.1f}s, serve.run -> healthy {cold['deploy_to_healthy_s']:.1f}s")
    print(
        f"model compute (1 step, {args.size}px, in-process median): large {compute['large'] * 1e3:.1f} ms, "
        f"small {compute['small'] * 1e3:.1f} ms"
    )
    print(f"{'requests':<8} {'metric':<12} {'n':>4} {'p50 ms':>8} {'p95 ms':>8}")
    for row in table:
        print(f"{row['requests']:<8} {row['metric']:<12} {row['n']:>4} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f}")
    print(f"Ray processes PSS: {memory['total_mb']:.0f} MB")
    args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
