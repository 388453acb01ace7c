"""Benchmark of modm.cache.ImageCache: query latency with exact (Flat), IVF and HNSW search, recall against
exact on near-duplicate queries, open (recovery + index build) time, and admission throughput.

Prints a table and writes JSON. Embeddings are random unit vectors; queries are near-duplicates (cosine
`--query-cosine`) of stored entries, which is what a cache of generated images sees on a hit.

    .venv/bin/python benchmarks/cache_bench.py                        # 10k and 100k entries, dim 768
    .venv/bin/python benchmarks/cache_bench.py --sizes 2000 --adds 100 --out /tmp/cache_bench.json  # smoke run
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
from PIL import Image

from modm.cache import ImageCache, IndexKind, NewEntry
from modm.config import CacheConfig

FILL_BATCH = 2_000


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def near_duplicates(rng: np.random.Generator, base: np.ndarray, cosine: float) -> np.ndarray:
    noise = unit_rows(rng, len(base), base.shape[1])
    noise -= (noise * base).sum(axis=1, keepdims=True) * base
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return np.ascontiguousarray(cosine * base + np.sqrt(1 - cosine**2) * noise, dtype=np.float32)


def png_of_side(side: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def config(directory: Path, capacity: int, kind: IndexKind, args, compact_every: int | None = None) -> CacheConfig:
    """Exact search throughout (FLAT), or `kind` as the large-namespace index from the first entry."""
    exact = kind is IndexKind.FLAT
    return CacheConfig(
        directory=str(directory),
        capacity=capacity,
        hnsw_min_entries=capacity + 1 if exact else 1,
        large_index="hnsw" if exact else kind.value,
        hnsw_m=args.hnsw_m,
        hnsw_ef_search=args.ef_search,
        hnsw_ef_construction=args.ef_construction,
        compact_every=compact_every or args.compact_every,
    )


def percentile_ms(samples: list[float], q: float) -> float:
    return 1e3 * float(np.percentile(samples, q))


def time_queries(cache: ImageCache, queries: np.ndarray, batch: int) -> dict:
    singles = []
    for query in queries:
        start = time.perf_counter()
        cache.query(query, ["bench"])
        singles.append(time.perf_counter() - start)
    batches = []
    for start_row in range(0, len(queries) - batch + 1, batch):
        start = time.perf_counter()
        cache.query_batch(queries[start_row : start_row + batch], [["bench"]] * batch)
        batches.append(time.perf_counter() - start)
    return {
        "query_p50_ms": percentile_ms(singles, 50),
        "query_p99_ms": percentile_ms(singles, 99),
        f"batch{batch}_mean_ms": 1e3 * statistics.fmean(batches) if batches else None,
    }


def time_adds(cache: ImageCache, rng: np.random.Generator, n: int, png: bytes, admitters: int = 1) -> dict:
    """`n` admissions from `admitters` concurrent threads (as the CacheIndex replica's worker threads run them):
    admissions per second of wall time, and each admission's latency until it was committed."""
    vectors = unit_rows(rng, n, cache.dim)
    latencies = [0.0] * n

    def admit(i: int) -> None:
        start = time.perf_counter()
        cache.add(png, vectors[i], prompt=f"bench add {i}", tenant="bench", source_model="bench", k=0)
        latencies[i] = time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(admitters) as pool:
        list(pool.map(admit, range(n)))
    wall_s = time.perf_counter() - start
    return {
        "adds": n,
        "admitters": admitters,
        "adds_per_s": n / wall_s,
        "add_p50_ms": percentile_ms(latencies, 50),
        "add_p99_ms": percentile_ms(latencies, 99),
    }


def bench_size(size: int, args, root: Path) -> list[dict]:
    rng = np.random.default_rng(size)
    directory = root / f"cache-{size}"
    vectors = unit_rows(rng, size, args.dim)
    fill_png = png_of_side(4)
    start = time.perf_counter()
    # One snapshot at the end of the fill, not one per batch.
    with ImageCache(
        config(directory, size, IndexKind.FLAT, args=args, compact_every=size + 1), args.dim, durable=False
    ) as cache:
        for first in range(0, size, FILL_BATCH):
            cache.add_many(
                [
                    NewEntry(
                        png_bytes=fill_png,
                        embedding=v,
                        prompt=f"prompt {first + i}",
                        tenant="bench",
                        source_model="bench",
                        k=0,
                    )
                    for i, v in enumerate(vectors[first : first + FILL_BATCH])
                ]
            )
    fill_s = time.perf_counter() - start
    picked = rng.choice(size, args.queries, replace=False)
    queries = near_duplicates(rng, vectors[picked], args.query_cosine)

    # Exact top-1 over the filled gallery; every kind starts from a copy of that gallery, so that one kind's timed
    # adds (which evict the oldest entries, perhaps a query's planted one) do not change the next kind's answers.
    exact_ids = faiss.knn(queries, vectors, 1, faiss.METRIC_INNER_PRODUCT)[1][:, 0]
    rows = []
    for kind in args.kinds:
        work = root / f"cache-{size}-{kind.value}"
        shutil.copytree(directory, work)
        start = time.perf_counter()
        cache = ImageCache(config(work, size, kind, args=args), args.dim, durable=args.durable)
        open_s = time.perf_counter() - start  # recovery; HNSW graphs build in the background from here
        cache.wait_for_index_builds()
        ready_s = time.perf_counter() - start
        assert cache.stats().namespaces["bench"].index_kind is kind
        row = {"entries": size, "index": kind.value, "fill_s": fill_s, "open_s": open_s, "index_ready_s": ready_s}
        row.update(time_queries(cache, queries, args.batch))
        ids = np.array([m.entry_id for m in cache.query_batch(queries, [["bench"]] * len(queries))])
        row["recall_at_1_vs_planted"] = float(np.mean(ids == picked))
        row["agreement_with_exact"] = float(np.mean(ids == exact_ids))
        start = time.perf_counter()
        cache.compact()  # a full snapshot of every live entry, as every `compact_every` admissions
        row["compact_s"] = time.perf_counter() - start
        # At capacity: each add evicts.
        row.update(time_adds(cache, rng, args.adds, png_of_side(args.png_side), args.admitters))
        row["index_builds_during_adds"] = cache.stats().namespaces["bench"].hnsw_builds - (kind is not IndexKind.FLAT)
        cache.close()
        shutil.rmtree(work)
        rows.append(row)
        print_row(row, args.batch)
    shutil.rmtree(directory)
    return rows


def print_row(row: dict, batch: int) -> None:
    print(
        f"{row['entries']:>8} {row['index']:>5} {row['open_s']:>8.2f} {row['index_ready_s']:>8.2f} "
        f"{row['query_p50_ms']:>9.3f} "
        f"{row['query_p99_ms']:>9.3f} {row[f'batch{batch}_mean_ms'] or float('nan'):>10.2f} "
        f"{row['recall_at_1_vs_planted']:>7.3f} {row['agreement_with_exact']:>7.3f} {row['adds_per_s']:>8.1f} "
        f"{row['add_p50_ms']:>8.2f} {row['add_p99_ms']:>8.2f} {row['compact_s']:>9.2f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="Cache sizes (entries).")
    parser.add_argument("--dim", type=int, default=768, help="Embedding dim (CLIP ViT-L/14: 768).")
    parser.add_argument("--queries", type=int, default=256, help="Near-duplicate queries per size.")
    parser.add_argument("--query-cosine", type=float, default=0.9, help="Cosine of a query to its planted entry.")
    parser.add_argument("--batch", type=int, default=64, help="Rows per batched query.")
    parser.add_argument("--adds", type=int, default=200, help="Timed admissions per size and index kind.")
    parser.add_argument("--admitters", type=int, default=1, help="Concurrent threads making the timed adds.")
    parser.add_argument("--png-side", type=int, default=256, help="Side of the random PNG the timed adds write.")
    parser.add_argument(
        "--kinds",
        type=IndexKind,
        nargs="+",
        default=[IndexKind.FLAT, IndexKind.IVF, IndexKind.HNSW],
        help="Index kinds to measure (flat = exact search throughout).",
    )
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-search", type=int, default=64)
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--compact-every", type=int, default=256)
    parser.add_argument(
        "--no-durable",
        dest="durable",
        action="store_false",
        help="Skip fsync on the timed adds (crash-safe against process death only).",
    )
    parser.add_argument("--threads", type=int, default=1, help="faiss OpenMP threads.")
    parser.add_argument("--workdir", type=Path, default=None, help="Where caches are built (default: a tmp dir).")
    parser.add_argument("--out", type=Path, default=Path("cache_bench.json"), help="JSON output path.")
    args = parser.parse_args()
    if args.queries < args.batch:
        parser.error(f"--queries ({args.queries}) must be at least --batch ({args.batch})")

    faiss.omp_set_num_threads(args.threads)
    print(
        f"dim={args.dim} queries={args.queries} cosine={args.query_cosine} HNSW M={args.hnsw_m} "
        f"efSearch={args.ef_search} efConstruction={args.ef_construction} faiss threads={args.threads} "
        f"durable adds={args.durable} png={args.png_side}px ({len(png_of_side(args.png_side))} bytes)"
    )
    batch_header = f"b{args.batch}_ms"
    print(
        f"{'entries':>8} {'index':>5} {'open_s':>8} {'ready_s':>8} {'q_p50_ms':>9} {'q_p99_ms':>9} "
        f"{batch_header:>10} "
        f"{'recall':>7} {'=exact':>7} {'adds/s':>8} {'add_p50':>8} {'add_p99':>8} {'compact_s':>9}"
    )
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as root:
        for size in args.sizes:
            rows.extend(bench_size(size, args, Path(root)))
    result = {
        "benchmark": "cache_bench",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "faiss": faiss.__version__,
            "load_average": os.getloadavg(),
        },
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
