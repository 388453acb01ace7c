"""Speed and quality of each feature-cache kind and threshold on the trained world's models (issue 17, part 4).

For each row (a model and a `feature_cache` setting, or none) the world's evaluation prompts are generated through
`DiffusionGenerator`, `--batch-size` requests per pipeline call (as a request-batching replica runs them: TaylorSeer
and PAB share the batch's denoiser passes, first_block runs its requests one per call), at the world's serving size
(32x32) and `--steps` steps. The table gives seconds per image (text encoding, denoising and VAE decoding; the median
of per-call times over the call's images, so a load spike on the shared machine moves it less), the gain over the
same model without a cache, the fraction of hooked-module calls diffusers' hook skipped (its unit: transformer
blocks for first_block, attention modules otherwise), judge accuracy (`all`: every attribute right; `shape_colour`)
and FID on judge features against `REAL_IMAGES_MIN` real world images (`modm.world.eval`).

FID needs more images than the judge's 64 feature dimensions for a full-rank covariance, and with a few hundred it
is still biased upwards by the finite sample (see `modm.world.eval`): rows of one run are comparable with each
other, not with `world_eval.json`'s 1,000-sample FIDs. Thresholds found on 32x32 world models say nothing about
1024^2 models; the shipped GPU configs leave feature caches off.

    nice -n 15 .venv/bin/python benchmarks/feature_cache_bench.py --samples 100 \
        --out benchmarks/results/feature_cache_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORLD = REPO / "modm/world/weights"

# (model role, feature_cache or None). The large model is SD3-class (block caches), the small SDXL-class (PAB).
ROWS: list[tuple[str, dict | None]] = [
    ("large", None),
    ("large", {"kind": "first_block", "threshold": 0.05}),
    ("large", {"kind": "first_block", "threshold": 0.1}),
    ("large", {"kind": "first_block", "threshold": 0.2}),
    ("large", {"kind": "taylorseer", "cache_interval": 3}),
    ("large", {"kind": "taylorseer", "cache_interval": 5}),
    ("small", None),
    ("small", {"kind": "pyramid_attention_broadcast", "spatial_attention_block_skip_range": 2}),
    ("small", {"kind": "pyramid_attention_broadcast", "spatial_attention_block_skip_range": 3}),
]


def label(feature_cache: dict | None) -> str:
    if feature_cache is None:
        return "none"
    return ",".join(f"{key}={value}" for key, value in feature_cache.items())


def run_row(role: str, feature_cache: dict | None, *, samples: int, steps: int, batch_size: int, evaluate) -> dict:
    from modm.config.feature_cache import FEATURE_CACHE_INFO_KEY
    from modm.generation.generator import DiffusionGenerator, GenerationRequest
    from modm.world.pipelines import WORLD_IMAGE_SIZE, world_model_spec

    spec = world_model_spec(WORLD / role, role, device="cpu", num_inference_steps=steps, feature_cache=feature_cache)
    diffusion = DiffusionGenerator.from_spec(spec, role)
    diffusion.pipe.set_progress_bar_config(disable=True)
    side = WORLD_IMAGE_SIZE
    seconds: list[float] = []
    skipped = total = 0

    def generate(prompts, seeds):
        nonlocal skipped, total
        images = []
        requests = [GenerationRequest(prompt, side, side, steps, int(seed)) for prompt, seed in zip(prompts, seeds)]
        for start_at in range(0, len(requests), batch_size):
            batch = requests[start_at : start_at + batch_size]
            start = time.perf_counter()
            out = diffusion.txt2img_batch(batch)
            seconds.append((time.perf_counter() - start) / len(batch))
            for image in out:
                counts = image.info.get(FEATURE_CACHE_INFO_KEY)
                if counts is not None:
                    skipped, total = skipped + counts["skipped"], total + counts["total"]
            images.extend(out)
        return images

    warm_up = [GenerationRequest("a red circle", side, side, steps, i) for i in range(batch_size)]
    diffusion.txt2img_batch(warm_up)  # the first call pays one-off costs the table should not
    result = evaluate(f"{role}:{label(feature_cache)}", generate, samples)
    return {
        "model": role,
        "feature_cache": feature_cache,
        "seconds_per_image": statistics.median(seconds),
        "skipped_fraction": skipped / total if total else 0.0,
        "judge_all": result.judge["all"],
        "judge_shape_colour": result.judge["shape_colour"],
        "fid": result.fid,
        "fid_note": result.fid_note,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=100, help="evaluation prompts per row (FID needs > 64)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per image")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="requests per pipeline call, as a request-batching replica runs them (TaylorSeer and PAB share the "
        "batch's passes; first_block runs them one per call)",
    )
    parser.add_argument("--only", nargs="*", help="rows whose 'model:setting' label contains one of these")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    from modm.world.eval import REAL_IMAGES_MIN, evaluate_generator, real_features
    from modm.world.format import validate_world_dir
    from modm.world.judge import Judge
    from modm.world.world import World

    load_at_start = os.getloadavg()
    torch.set_num_threads(args.threads)
    manifest = validate_world_dir(WORLD, ("judge",))
    world = World(seed=manifest.seed, image_size=manifest.image_size)
    judge = Judge.load(WORLD / manifest.components["judge"].path, torch.device("cpu"))
    real = real_features(world, judge, REAL_IMAGES_MIN)

    def evaluate(name, generate, samples):
        return evaluate_generator(name, generate, world, judge, None, samples, real=real)

    started = time.perf_counter()
    rows = []

    def write() -> None:
        """The table so far (after every row: a run cut short keeps what it measured)."""
        for row in rows:
            plain = next((r for r in rows if r["model"] == row["model"] and r["feature_cache"] is None), None)
            row["speedup_vs_none"] = plain["seconds_per_image"] / row["seconds_per_image"] if plain else None
        if not args.out:
            return
        body = {
            "command": "benchmarks/feature_cache_bench.py "
            + " ".join(f"--{k} {v}" for k, v in vars(args).items() if v),
            "samples": args.samples,
            "steps": args.steps,
            "threads": args.threads,
            "batch_size": args.batch_size,
            "image_size": 32,
            "real_images_for_fid": REAL_IMAGES_MIN,
            "load_average_start_now": [load_at_start, os.getloadavg()],
            "wall_seconds": time.perf_counter() - started,
            "rows": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")

    for role, feature_cache in ROWS:
        name = f"{role}:{label(feature_cache)}"
        if args.only and not any(part in name for part in args.only):
            continue
        row = run_row(
            role, feature_cache, samples=args.samples, steps=args.steps, batch_size=args.batch_size, evaluate=evaluate
        )
        rows.append(row)
        write()
        print(
            f"{name:70s} {row['seconds_per_image']:.3f} s/img  x{row['speedup_vs_none'] or 0:.2f}  skipped "
            f"{row['skipped_fraction']:.2f}  judge all {row['judge_all']:.3f}  FID "
            f"{row['fid'] if row['fid'] is None else round(row['fid'], 1)}  load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    if args.out:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
