"""Batched generation on this machine: throughput per model vs batch size and engine, and a Poisson sweep with mixed k.

Part 1 (closed batches): for each model (the world's SD3-class large, SDXL-class small), engine (none: one request at
a time; request: request-level batches; step: step-level batches) and batch size b, send b requests at once to the
engine and time them: images per second (median of --repeats, with min and max).

Part 2 (open loop): Poisson arrivals on one model, a mix of misses (txt2img, all T steps) and hits refined at k in
{5, ..., 30} of 50 (img2img at strength 1 - k/50, whatever the benchmark's T), at rates from idle to past saturation
(multiples of the unbatched engine's measured capacity), --repeats runs each: mean and p95 latency and throughput per
engine, median over runs with the spread (min-max). Request-level batches share a call only between requests of one
strength; step-level batches share every denoising pass.

    .venv/bin/python benchmarks/batch_bench.py --out benchmarks/results/batch_bench.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from pathlib import Path

import torch
from PIL import Image

from modm.config import ModelSpec
from modm.generation import DiffusionGenerator, GenerationRequest, batching_generator

REPO = Path(__file__).resolve().parents[1]
WORLD = REPO / "modm" / "world" / "weights"
K_CHOICES = (5, 10, 15, 20, 25, 30)  # k of MODM_TOTAL_STEPS: a hit skips the fraction k/50 of the schedule
MODM_TOTAL_STEPS = 50
PROMPTS = ("a red circle left of a blue square", "a green triangle", "two yellow squares", "a blue circle on top")


def engines_available() -> list[str]:
    engines = ["none", "request"]
    try:
        import modm.generation.step_batching  # noqa: F401
    except ImportError:
        return engines
    return [*engines, "step"]


def spec_for(role: str, args, engine: str, max_batch_size: int) -> ModelSpec:
    extra = {"max_sequence_length": 1} if role == "large" else {}
    return ModelSpec(
        source=str(args.weights / role),
        device="cpu",
        num_inference_steps=args.steps,
        guidance_scale=4.0,
        default_size=args.size,
        max_size=max(64, args.size),
        batching={"engine": engine, "max_batch_size": max_batch_size, "max_wait_ms": args.max_wait_ms},
        **extra,
    )


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


async def _one(generator, job: dict, source: Image.Image):
    req = GenerationRequest(job["prompt"], job["size"], job["size"], job["steps"], job["seed"])
    if job["k"] is None:
        return await generator.txt2img(req)
    return await generator.img2img(req, source, 1.0 - job["k"] / MODM_TOTAL_STEPS)


def closed_batches(args, role: str, diffusion: DiffusionGenerator, source: Image.Image, engines: list[str]) -> list:
    rows = []
    k = None if role == "large" else 20  # the small model refines (a hit at k=20)
    for engine in engines:
        for b in args.batch_sizes:
            generator = batching_generator(diffusion, spec_for(role, args, engine, b))
            rates = []
            for repeat in range(args.repeats + 1):  # the first run warms up
                jobs = [
                    {"prompt": PROMPTS[i % 4], "size": args.size, "steps": args.steps, "seed": i, "k": k}
                    for i in range(b)
                ]

                async def run(jobs=jobs, generator=generator):
                    start = time.perf_counter()
                    await asyncio.gather(*(_one(generator, job, source) for job in jobs))
                    return time.perf_counter() - start

                seconds = asyncio.run(run())
                if repeat:
                    rates.append(b / seconds)
            generator.close()  # the step engine's thread
            row = {"model": role, "engine": engine, "batch_size": b, "images_per_s": spread(rates)}
            rows.append(row)
            print(
                f"{role:5s} {engine:7s} b={b:<2d} {row['images_per_s']['median']:7.2f} img/s "
                f"({row['images_per_s']['min']:.2f}-{row['images_per_s']['max']:.2f})",
                flush=True,
            )
    return rows


def poisson_jobs(rate_per_s: float, n: int, steps: int, size: int, hit_share: float, seed: int) -> list[dict]:
    rng = random.Random(seed)
    t, jobs = 0.0, []
    for i in range(n):
        t += rng.expovariate(rate_per_s)
        k = rng.choice(K_CHOICES) if rng.random() < hit_share else None
        jobs.append({"at": t, "prompt": PROMPTS[i % 4], "size": size, "steps": steps, "seed": seed * 1000 + i, "k": k})
    return jobs


def open_loop(generator, jobs: list[dict], source: Image.Image) -> dict:
    async def run():
        start = time.perf_counter()
        latencies = []

        async def arrive(job):
            await asyncio.sleep(max(0.0, job["at"] - (time.perf_counter() - start)))
            sent = time.perf_counter()
            await _one(generator, job, source)
            latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(arrive(job) for job in jobs))
        return latencies, time.perf_counter() - start

    latencies, makespan = asyncio.run(run())
    latencies.sort()
    return {
        "mean_s": statistics.fmean(latencies),
        "p95_s": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
        "throughput_per_s": len(latencies) / makespan,
    }


def sweep(args, role: str, diffusion: DiffusionGenerator, source: Image.Image, engines: list[str]) -> dict:
    # Capacity of the unbatched engine on this mix: mean service time of a sample run one at a time.
    sample = poisson_jobs(1e6, 12, args.steps, args.size, args.hit_share, seed=99)
    alone = batching_generator(diffusion, spec_for(role, args, "none", 1))

    async def serve_sample():
        await asyncio.gather(*(_one(alone, job, source) for job in sample))

    start = time.perf_counter()
    asyncio.run(serve_sample())
    capacity_per_s = len(sample) / (time.perf_counter() - start)
    print(f"{role}: unbatched capacity on the mix {capacity_per_s:.2f} req/s", flush=True)
    points = []
    for multiple in args.rate_multiples:
        rate = multiple * capacity_per_s
        for engine in engines:
            generator = batching_generator(diffusion, spec_for(role, args, engine, args.sweep_batch_size))
            runs = [
                open_loop(
                    generator, poisson_jobs(rate, args.sweep_requests, args.steps, args.size, args.hit_share, r), source
                )
                for r in range(args.repeats)
            ]
            generator.close()
            point = {
                "model": role,
                "engine": engine,
                "rate_multiple": multiple,
                "rate_per_s": rate,
                **{key: spread([run[key] for run in runs]) for key in ("mean_s", "p95_s", "throughput_per_s")},
            }
            points.append(point)
            print(
                f"{role:5s} rate {multiple:4.2f}x ({rate:5.2f}/s) {engine:7s} mean {point['mean_s']['median']:.3f} s "
                f"({point['mean_s']['min']:.3f}-{point['mean_s']['max']:.3f}) p95 {point['p95_s']['median']:.3f} "
                f"thr {point['throughput_per_s']['median']:.2f}/s",
                flush=True,
            )
    return {"unbatched_capacity_per_s": capacity_per_s, "points": points}


def winners(points: list[dict]) -> list[dict]:
    """Per rate: the engine with the lowest median mean latency, and by how much it beats the next."""
    out = []
    for multiple in sorted({p["rate_multiple"] for p in points}):
        at = sorted((p for p in points if p["rate_multiple"] == multiple), key=lambda p: p["mean_s"]["median"])
        best, second = at[0], at[1] if len(at) > 1 else at[0]
        out.append(
            {
                "rate_multiple": multiple,
                "best": best["engine"],
                "mean_s": best["mean_s"]["median"],
                "runner_up": second["engine"],
                "runner_up_mean_s": second["mean_s"]["median"],
                # Spreads overlap: the difference is within run-to-run noise.
                "clear": best["mean_s"]["max"] < second["mean_s"]["min"],
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=WORLD, help="directory with large/ and small/ pipelines")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="T of the benchmark's runs")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a model replica gets one CPU)")
    parser.add_argument("--rate-multiples", type=float, nargs="+", default=[0.25, 0.6, 1.0, 1.6])
    parser.add_argument("--sweep-requests", type=int, default=16)
    parser.add_argument("--sweep-batch-size", type=int, default=8)
    parser.add_argument("--hit-share", type=float, default=0.7, help="share of requests that are refinements")
    parser.add_argument("--sweep-model", default="large", choices=("large", "small"))
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("batch_bench.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engines = engines_available()
    diffusions = {
        role: DiffusionGenerator.from_spec(spec_for(role, args, "none", 1), role) for role in ("large", "small")
    }
    source = diffusions["large"].txt2img(GenerationRequest(PROMPTS[0], args.size, args.size, args.steps, 0))
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "engines": engines, "closed_batches": []}
    for role, diffusion in diffusions.items():
        result["closed_batches"] += closed_batches(args, role, diffusion, source, engines)
    if not args.skip_sweep:
        role = args.sweep_model
        result["sweep"] = sweep(args, role, diffusions[role], source, engines)
        result["sweep"]["winners"] = winners(result["sweep"]["points"])
        for row in result["sweep"]["winners"]:
            print(
                f"rate {row['rate_multiple']:.2f}x: {row['best']} ({row['mean_s']:.3f} s) over {row['runner_up']} "
                f"({row['runner_up_mean_s']:.3f} s){'' if row['clear'] else ' -- within the spread'}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
