"""Seconds per denoising step of the step-batching engine at several batch sizes, and its images against unbatched.

For each model (the tiny zoo of deployments/configs/local-tiny.yaml, the trained world of deployments/configs/
local.yaml) and batch size b, `b` requests start together on a `StepBatchingGenerator` with room for exactly b, so
every pass runs all of them; `on_pass` times each pass (one denoising step of b images, guidance included; the first
pass of a batch also carries its text encoding and the previous batch's decoding). The table gives the median pass
(with min and max over all passes of all repeats), seconds per step per image and the per-image speed-up over b = 1,
next to the unbatched pipeline's own step cost (`DiffusionGenerator.measure_step_cost_s`). `max_grey_levels` is the
largest pixel difference between each image of one mixed batch (misses, refinements at two strengths, resumes from two
steps where the model resumes) and its unbatched generation.

    .venv/bin/python benchmarks/step_batching_bench.py --out benchmarks/results/step_batching.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {"tiny": "deployments/configs/local-tiny.yaml", "world": "deployments/configs/local.yaml"}
PROMPTS = ["a red circle", "a blue square on the left", "a green triangle", "two yellow stars", "a purple ring"]


def load_models(name: str, zoo: Path) -> dict:
    """The large and small DiffusionGenerators of one config in CONFIGS, on the CPU."""
    from modm.config import load_config, resolve_relative_paths
    from modm.generation import DiffusionGenerator

    config, zoo = load_config(REPO / CONFIGS[name]), zoo.resolve()
    if name == "tiny":
        from modm.demo import ensure_zoo

        config = config.model_copy(
            update={
                "models": config.models.model_copy(
                    update={
                        role: getattr(config.models, role).model_copy(update={"source": str(zoo / role)})
                        for role in ("large", "small")
                    }
                )
            }
        )
        ensure_zoo(config, zoo)
    config = resolve_relative_paths(config, REPO)
    return {
        role: DiffusionGenerator.from_spec(getattr(config.models, role).model_copy(update={"device": "cpu"}), role)
        for role in ("large", "small")
    }


def pass_seconds(diffusion, batch_size: int, *, size: int, steps: int, repeats: int) -> list[float]:
    """Seconds of every denoiser pass that ran `batch_size` requests together, over `repeats` batches."""
    from modm.generation import GenerationRequest
    from modm.generation.step_batching import StepBatchingGenerator

    seconds: list[tuple[int, float]] = []
    engine = StepBatchingGenerator(
        diffusion,
        max_batch_size=batch_size,
        max_wait_s=1.0,  # the batch's requests arrive together: the first pass waits only for them
        on_pass=lambda size_, s, _steps: seconds.append((size_, s)),
    )
    requests = [GenerationRequest(PROMPTS[i % len(PROMPTS)], size, size, steps, i) for i in range(batch_size)]

    async def batch():
        await asyncio.gather(*[engine.txt2img(r) for r in requests])

    try:
        asyncio.run(batch())  # warm-up
        seconds.clear()
        for _ in range(repeats):
            asyncio.run(batch())
    finally:
        engine.close()
    return [s for n, s in seconds if n == batch_size]


def mixed_batch_grey_levels(diffusion, *, size: int, steps: int) -> int:
    """Largest uint8 difference between the images of one mixed batch and their unbatched generations."""
    from modm.generation import GenerationRequest
    from modm.generation.step_batching import StepBatchingGenerator
    from modm.models.loading import ModelLoadError

    requests = [GenerationRequest(p, size, size, steps, i) for i, p in enumerate(PROMPTS[:3])]
    expected = [diffusion.txt2img(r) for r in requests]
    strengths, ks = (0.3, 0.6), tuple(sorted({k for k in (steps // 5, steps // 2) if 0 < k < steps}))
    expected += [diffusion.img2img(requests[0], expected[1], s) for s in strengths]
    try:
        diffusion.check_resumable()
        resumable = bool(ks)
    except ModelLoadError:  # SDXL's Euler scales given latents: NIRVANA does not resume it
        resumable = False
    if resumable:
        full, snapshots = diffusion.txt2img_with_snapshots(requests[2], ks)
        expected += [diffusion.resume(requests[2], snapshots[k], k) for k in ks] + [full]
    engine = StepBatchingGenerator(diffusion, max_batch_size=8, max_wait_s=0.05)

    async def batch():
        calls = [engine.txt2img(r) for r in requests]
        calls += [engine.img2img(requests[0], expected[1], s) for s in strengths]
        if resumable:
            calls += [engine.resume(requests[2], snapshots[k], k) for k in ks]
            calls.append(engine.txt2img_with_snapshots(requests[2], ks))
        return await asyncio.gather(*calls)

    try:
        images = [image[0] if isinstance(image, tuple) else image for image in asyncio.run(batch())]
    finally:
        engine.close()
    return max(int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max()) for a, b in zip(expected, images))


def step_batching_rows(
    model_sets: list[str], *, batch_sizes: list[int], steps: int, repeats: int, zoo: Path, check: bool = True
) -> list[dict]:
    """One row per model set, role and batch size (see the module docstring)."""
    rows = []
    for name in model_sets:
        for role, diffusion in load_models(name, zoo).items():
            size = diffusion.spec.default_size
            common = {
                "models": name,
                "role": role,
                "pipeline": type(diffusion.pipe).__name__,
                "size": size,
                "steps": steps,
                "pipeline_step_s": round(diffusion.measure_step_cost_s(size), 6),
                "max_grey_levels": mixed_batch_grey_levels(diffusion, size=size, steps=steps) if check else None,
            }
            single = None
            for batch_size in batch_sizes:
                seconds = pass_seconds(diffusion, batch_size, size=size, steps=steps, repeats=repeats)
                median = statistics.median(seconds)
                single = median if batch_size == 1 else single
                rows.append(
                    {
                        **common,
                        "batch_size": batch_size,
                        "passes": len(seconds),
                        "step_s": round(median, 6),
                        "step_s_min": round(min(seconds), 6),
                        "step_s_max": round(max(seconds), 6),
                        "image_step_s": round(median / batch_size, 6),
                        "speedup": None if single is None else round(single * batch_size / median, 3),
                    }
                )
    return rows


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'models':6} {'role':5} {'size':>4} {'pipeline s/step':>15} {'grey':>4} {'batch':>5} "
        f"{'s/pass (min-max)':>26} {'s/step/image':>12} {'speed-up':>8}"
    )
    print(header)
    for r in rows:
        spread = f"{r['step_s']:.4f} ({r['step_s_min']:.4f}-{r['step_s_max']:.4f})"
        speedup = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        grey = "-" if r["max_grey_levels"] is None else r["max_grey_levels"]
        print(
            f"{r['models']:6} {r['role']:5} {r['size']:>4} {r['pipeline_step_s']:>15.4f} {grey:>4} "
            f"{r['batch_size']:>5} {spread:>26} {r['image_step_s']:>12.4f} {speedup:>8}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per request")
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per batch size")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (a model replica gets one CPU)")
    parser.add_argument("--zoo", type=Path, default=Path(".modm/zoo"), help="where the tiny zoo is (built if not)")
    parser.add_argument("--no-check", action="store_true", help="skip the mixed-batch image comparison")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/step_batching.json"))
    args = parser.parse_args()
    if any(b < 1 for b in args.batch_sizes) or args.steps < 1 or args.repeats < 1:
        parser.error("batch sizes, steps and repeats must be positive")

    import torch

    torch.set_num_threads(args.threads)
    started = time.time()
    rows = step_batching_rows(
        args.models,
        batch_sizes=sorted(set(args.batch_sizes)),
        steps=args.steps,
        repeats=args.repeats,
        zoo=args.zoo,
        check=not args.no_check,
    )
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "step_batching",
        "device": "cpu",
        "threads": args.threads,
        "steps": args.steps,
        "repeats": args.repeats,
        "seconds": round(time.time() - started, 1),
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
