"""Lookups per second of the image cache's reader replicas (CacheReader, deployments/cache_index.py) with 1, 2 and
4 replicas, through real Serve handles.

Fills a cache directory with `--entries` random 768-d entries (tiny PNGs), deploys the CacheIndex writer and
CacheReader replicas that follow it (as the app builder binds them, with the app's actor options and transport), and
drives `lookup` calls (near-duplicate queries of stored entries: a hit, so each answer carries its PNG, as the
Router's lookup does) from `--clients` client actors, each keeping `--concurrency` calls in flight, for `--seconds`.
Prints a table and writes JSON, with the machine's load average before and after each run: on a small shared
machine the replicas compete with the clients, Serve's own processes and whatever else runs, so replicas scale
lookups only as far as there are idle cores.

    .venv/bin/python benchmarks/cache_readers_bench.py                            # 10k entries, 1/2/4 readers
    .venv/bin/python benchmarks/cache_readers_bench.py --entries 2000 --seconds 3 --out /tmp/readers.json  # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from modm.cache import ImageCache, NewEntry
from modm.config import CacheConfig

APP = "cache-readers-bench"
TENANT = "bench"
DIM = 768
FILL_BATCH = 2_000


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def tiny_png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def fill(config: CacheConfig, vectors: np.ndarray) -> None:
    png = tiny_png(0)
    with ImageCache(config, DIM, durable=False) as cache:
        for start in range(0, len(vectors), FILL_BATCH):
            cache.add_many(
                [
                    NewEntry(png, vectors[i], prompt=f"prompt {i}", tenant=TENANT, source_model="bench", k=0)
                    for i in range(start, min(start + FILL_BATCH, len(vectors)))
                ]
            )


def near_duplicates(rng: np.random.Generator, base: np.ndarray, cosine: float = 0.95) -> np.ndarray:
    noise = unit_rows(rng, len(base))
    noise -= (noise * base).sum(axis=1, keepdims=True) * base
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return np.ascontiguousarray(cosine * base + np.sqrt(1 - cosine**2) * noise, dtype=np.float32)


def make_client_class():
    import ray

    @ray.remote(num_cpus=0)
    class LookupClient:
        """Keeps `concurrency` lookups in flight through the readers' handle, as the Router calls them."""

        def __init__(self):
            from ray import serve

            from deployments.handles import HandleProxy

            self.readers = HandleProxy(serve.get_deployment_handle("CacheReader", app_name=APP))

        async def run(self, queries: np.ndarray, concurrency: int, seconds: float, warmup_s: float) -> dict:
            latencies: list[float] = []
            hits = 0
            start = time.perf_counter()
            measure_from, stop_at = start + warmup_s, start + warmup_s + seconds

            async def worker(offset: int) -> None:
                nonlocal hits
                i = offset
                while time.perf_counter() < stop_at:
                    t = time.perf_counter()
                    found = await self.readers.lookup(queries[i % len(queries)], [TENANT], 0.5)
                    if t >= measure_from:
                        latencies.append(time.perf_counter() - t)
                        hits += found.png is not None
                    i += concurrency

            await asyncio.gather(*(worker(k) for k in range(concurrency)))
            return {"lookups": len(latencies), "hits": hits, "latencies": latencies}

    return LookupClient


def run_readers(replicas: int, cache_config: dict, queries: np.ndarray, args) -> dict:
    import ray
    from ray import serve

    from deployments.app import MAX_ONGOING, AppArgs
    from deployments.cache_index import CacheIndexServer, CacheReaderServer

    options = AppArgs(system={"models": {"large": {"source": "unused"}}})

    def deployment(cls, name: str, **extra):
        return serve.deployment(
            cls,
            name=name,
            max_ongoing_requests=MAX_ONGOING[name],
            ray_actor_options=options.options_for(name),
            **extra,
        )

    writer = deployment(CacheIndexServer, "CacheIndex").bind(cache_config, DIM)
    readers = deployment(CacheReaderServer, "CacheReader", num_replicas=replicas).bind(cache_config, DIM)
    started = time.perf_counter()
    # The ingress of this app is the readers; the writer is bound beside them so that they follow a live one.
    serve.run(readers, name=APP, route_prefix=None)
    serve.run(writer, name=f"{APP}-writer", route_prefix=None)
    ready_s = time.perf_counter() - started
    client_class = make_client_class()
    clients = [client_class.remote() for _ in range(args.clients)]
    load_before = os.getloadavg()
    parts = ray.get([c.run.remote(queries, args.concurrency, args.seconds, args.warmup_s) for c in clients])
    load_after = os.getloadavg()
    for client in clients:
        ray.kill(client)
    latencies = [x for part in parts for x in part["latencies"]]
    lookups = sum(part["lookups"] for part in parts)
    serve.delete(APP)
    serve.delete(f"{APP}-writer")
    return {
        "readers": replicas,
        "lookups": lookups,
        "lookups_per_s": lookups / args.seconds,
        "hit_fraction": sum(part["hits"] for part in parts) / max(1, lookups),
        "p50_ms": 1e3 * statistics.median(latencies),
        "p99_ms": 1e3 * float(np.percentile(latencies, 99)),
        "ready_s": ready_s,
        "load_before": load_before,
        "load_after": load_after,
    }


def in_process_rate(config: CacheConfig, queries: np.ndarray, seconds: float) -> float:
    """One CacheFollower queried and read on one thread, no Serve: what one replica's work costs alone."""
    from modm.cache.follower import CacheFollower

    with CacheFollower(config, DIM) as follower:
        done, stop_at = 0, time.perf_counter() + seconds
        while time.perf_counter() < stop_at:
            match = follower.query(queries[done % len(queries)], [TENANT])
            follower.get_png(match.entry_id)
            done += 1
    return done / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--clients", type=int, default=2, help="client actors (processes) driving lookups")
    parser.add_argument("--concurrency", type=int, default=16, help="lookups in flight per client")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per replica count")
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--num-cpus", type=int, default=8, help="logical CPUs of the local Ray cluster")
    parser.add_argument(
        "--omp-threads",
        type=int,
        default=1,
        help="faiss's OpenMP threads per process (1, as the test cluster runs: a replica's single queries gain "
        "nothing from more, and idle OpenMP threads spinning on a loaded machine slow everything)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cache_readers.json"))
    args = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

    import faiss
    import ray
    from ray import serve

    faiss.omp_set_num_threads(args.omp_threads)
    rng = np.random.default_rng(0)
    vectors = unit_rows(rng, args.entries)
    queries = near_duplicates(rng, vectors[rng.choice(args.entries, size=min(2_000, args.entries), replace=False)])
    directory = Path(tempfile.mkdtemp(prefix="modm-readers-bench-"))
    try:
        config = CacheConfig(
            directory=str(directory / "cache"), capacity=args.entries, hnsw_min_entries=args.entries + 1
        )
        t = time.perf_counter()
        fill(config, vectors)
        fill_s = time.perf_counter() - t
        single = in_process_rate(config, queries, min(args.seconds, 5.0))
        ray.init(
            num_cpus=args.num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"OMP_NUM_THREADS": str(args.omp_threads)}},
        )
        serve.start()
        rows = [run_readers(n, config.model_dump(mode="json"), queries, args) for n in args.replicas]
        ray.shutdown()
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    print(f"{args.entries} entries, {DIM}-d, exact search; fill {fill_s:.1f} s; in process (no Serve): {single:.0f}/s")
    print(f"{'readers':>7} {'lookups/s':>10} {'x1':>5} {'p50 ms':>7} {'p99 ms':>7} {'hits':>5}  load before -> after")
    base = rows[0]["lookups_per_s"]
    for row in rows:
        print(
            f"{row['readers']:>7} {row['lookups_per_s']:>10.0f} {row['lookups_per_s'] / base:>5.2f} "
            f"{row['p50_ms']:>7.2f} {row['p99_ms']:>7.2f} {row['hit_fraction']:>5.2f}  "
            f"{row['load_before'][0]:.1f} -> {row['load_after'][0]:.1f}"
        )
    result = {
        "entries": args.entries,
        "dim": DIM,
        "index": "flat (exact)",
        "clients": args.clients,
        "concurrency_per_client": args.concurrency,
        "seconds": args.seconds,
        "omp_threads": args.omp_threads,
        "in_process_lookups_per_s": single,
        "rows": rows,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
