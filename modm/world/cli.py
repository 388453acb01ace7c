"""`modm world build DIR` and `modm world eval --world DIR --samples N --json OUT`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modm.world.build import DEFAULT_BUILD_THREADS
from modm.world.format import WorldFormatError, WorldManifest

COMMITTED_WORLD = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class EvalEntry:
    """A row of `modm world eval`: a name and a factory (world dir, manifest) -> PromptGenerator, or None when the
    component it needs is not in the directory (the row is then skipped, with a note)."""

    name: str
    make: Callable[[Path, WorldManifest], object]


def _ground_truth(world_dir: Path, manifest: WorldManifest):
    from modm.world.eval import ground_truth_generator
    from modm.world.world import World

    return ground_truth_generator(World(seed=manifest.seed, image_size=manifest.image_size))


def _other_image(world_dir: Path, manifest: WorldManifest):
    from modm.world.eval import other_image_generator
    from modm.world.world import World

    return other_image_generator(World(seed=manifest.seed, image_size=manifest.image_size))


# The models and systems evaluated, in order; the diffusion components append their rows. ground-truth (the
# world's renderer) is the ceiling, other-image (a real image of another prompt) the floor.
EVAL_ENTRIES: list[EvalEntry] = [EvalEntry("ground-truth", _ground_truth), EvalEntry("other-image", _other_image)]


def _model_eval_entries() -> list[EvalEntry]:  # large, small, small2 (modm.world.model_steps)
    from modm.world.model_steps import model_eval_entries

    return model_eval_entries()


EVAL_ENTRIES += _model_eval_entries()


def _cmd_build(args) -> int:
    from modm.world.build import build_world

    build_world(args.directory, seed=args.seed, quick=args.quick, only=args.only, threads=args.threads)
    return 0


def _cmd_eval(args) -> int:
    import torch

    from modm.embedding.hf_clip import HfClipEmbedder
    from modm.world.build import REQUIRED_FOR_EVAL
    from modm.world.eval import (
        REAL_IMAGES_MIN,
        evaluate_generator,
        format_table,
        real_features,
        retrieval_accuracy,
    )
    from modm.world.format import validate_world_dir
    from modm.world.judge import Judge
    from modm.world.world import World

    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    torch.set_num_threads(args.threads)
    world_dir = Path(args.world)
    manifest = validate_world_dir(world_dir, REQUIRED_FOR_EVAL)
    world = World(seed=manifest.seed, image_size=manifest.image_size)
    device = torch.device("cpu")
    judge = Judge.load(world_dir / manifest.components["judge"].path, device)
    scorer = HfClipEmbedder(world_dir / manifest.components["clip_score"].path, device=device, batch_size=256)
    retriever = HfClipEmbedder(world_dir / manifest.components["clip"].path, device=device, batch_size=256)
    real = real_features(world, judge, max(args.samples, REAL_IMAGES_MIN))
    rows, skipped = [], []
    for entry in EVAL_ENTRIES:
        if args.only and entry.name not in args.only:
            continue
        generator = entry.make(world_dir, manifest)
        if generator is None:
            skipped.append(entry.name)
            continue
        rows.append(
            evaluate_generator(
                entry.name,
                generator,
                world,
                judge,
                scorer,
                args.samples,
                heldout_samples=args.heldout_samples,
                real=real,
            )
        )
    retrieval = {"clip": retrieval_accuracy(retriever, world), "clip_score": retrieval_accuracy(scorer, world)}
    print(format_table(rows, retrieval))
    if skipped:
        print(f"skipped (component not in {world_dir}): {', '.join(skipped)}")
    if args.json:
        body = {
            "world": str(world_dir),
            "manifest_command": manifest.command,
            "seed": manifest.seed,
            "format_version": manifest.format_version,
            "samples": args.samples,
            "models": {r.name: r.to_dict() for r in rows},
            "retrieval_top1": retrieval,
            "skipped": skipped,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def _cmd_calibrate(args) -> int:
    import torch

    from modm.embedding.hf_clip import HfClipEmbedder
    from modm.models.loading import load_pipeline
    from modm.quality.calibration import write_quality_samples
    from modm.world.calibrate import (
        K_CHOICES,
        QUALITY_ATTRIBUTE,
        calibration_samples,
        calibration_stream,
        pipeline_refiner,
        preserved_quality_ceiling,
        relation_breakdown,
        score_quantiles,
    )
    from modm.world.format import validate_world_dir
    from modm.world.judge import Judge
    from modm.world.model_steps import serving_step_ratio
    from modm.world.pipelines import SERVING, pipeline_generator, world_model_spec

    if args.cached < 1 or args.queries < 1:
        raise ValueError(f"--cached and --queries must be >= 1, got {args.cached} and {args.queries}")
    torch.set_num_threads(args.threads)
    world_dir = Path(args.world)
    manifest = validate_world_dir(
        world_dir, ("clip", "judge", "large", args.small) + (("clip_score",) if args.clip_samples_out else ())
    )
    device = torch.device("cpu")
    ratio = serving_step_ratio(world_dir, args.small)  # read before the run, so a world without it fails at once

    def pipe(role):
        return load_pipeline(world_model_spec(world_dir / manifest.components[role].path, role, device="cpu"))

    k_choices = tuple(args.k) if args.k else K_CHOICES
    cache, queries = calibration_stream(args.cached, args.queries, args.seed)
    run = calibration_samples(
        cache,
        queries,
        generate_large=pipeline_generator(pipe("large"), steps=args.total_steps, role="large"),
        refine_small=pipeline_refiner(
            pipe(args.small), total_steps=args.total_steps, guidance_scale=SERVING[args.small]["guidance_scale"]
        ),
        embedder=HfClipEmbedder(world_dir / manifest.components["clip"].path, device=device, batch_size=256),
        judge=Judge.load(world_dir / manifest.components["judge"].path, device),
        total_steps=args.total_steps,
        k_choices=k_choices,
        scorer=(
            HfClipEmbedder(world_dir / manifest.components["clip_score"].path, device=device, batch_size=256)
            if args.clip_samples_out
            else None
        ),
        progress=print,
    )
    write_quality_samples(args.samples_out, run.samples)
    print(f"wrote {len(run.samples)} samples to {args.samples_out} (fit: modm policy calibrate {args.samples_out})")
    if run.clip_samples is not None:
        write_quality_samples(args.clip_samples_out, run.clip_samples)
        print(f"wrote {len(run.clip_samples)} CLIPScore samples to {args.clip_samples_out}")
    clip_of = run.refined_clip_score or {}
    full_clip = f", CLIPScore {run.full_clip_score:.2f}" if run.full_clip_score is not None else ""
    print(f"large, full {args.total_steps} steps: judge all {run.full_accuracy['all']:.3f}{full_clip}")
    for k, acc in run.refined_accuracy.items():
        clip = f", CLIPScore {clip_of[k]:.2f}" if k in clip_of else ""
        print(f"{args.small} refining the best cached image at k={k}: judge all {acc['all']:.3f}{clip}")
    breakdown = relation_breakdown(run)
    print(f"per relation of query to cache (judge {QUALITY_ATTRIBUTE} of the full image, then of the hit at each k):")
    for relation, row in breakdown.items():
        q = row["score_quantiles"]
        refined = " ".join(f"k{k} {v:.2f}" for k, v in row["refined_quality"].items())
        print(
            f"  {relation:<8} {row['queries']:>4} queries, score p10/p50/p90 {q['p10']:.3f}/{q['p50']:.3f}/"
            f"{q['p90']:.3f}; full {row['full_quality']:.2f}; {refined}"
        )
    ceiling = preserved_quality_ceiling(run, total_steps=args.total_steps, large_small_step_ratio=ratio)
    print(
        f"at no quality loss: {ceiling['servable']:.2f} of queries have a right cached image (an oracle's hit rate);"
        f" the best-scoring one is right for {ceiling['retrieved_right']:.2f}; large:{args.small} step cost {ratio}"
    )
    for k, row in ceiling["per_k"].items():
        kept = "-" if row["kept"] is None else f"{row['kept']:.2f}"
        print(f"  k={k}: a right image stays right after refinement {kept}; throughput bound {row['gain_bound']:.2f}x")
    if args.json:
        body = {
            "world": str(world_dir),
            "small": args.small,
            "k_choices": list(k_choices),
            "cached": args.cached,
            "queries": args.queries,
            "seed": args.seed,
            "total_steps": args.total_steps,
            "full_accuracy": run.full_accuracy,
            "refined_accuracy": {str(k): v for k, v in run.refined_accuracy.items()},
            "score_quantiles": score_quantiles(run.scores),
            "preserved_quality_ceiling": {**ceiling, "per_k": {str(k): v for k, v in ceiling["per_k"].items()}},
            "by_relation": {
                relation: {**row, "refined_quality": {str(k): v for k, v in row["refined_quality"].items()}}
                for relation, row in breakdown.items()
            },
        }
        if run.full_clip_score is not None:
            body["full_clip_score"] = run.full_clip_score
            body["refined_clip_score"] = {str(k): v for k, v in clip_of.items()}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modm world", description="the trained miniature world")
    sub = parser.add_subparsers(dest="action", required=True)
    build = sub.add_parser("build", help="train the world's models into DIR (deterministic by seed)")
    build.add_argument("directory")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--quick", action="store_true", help="a few steps on a few images (checks the build runs)")
    build.add_argument("--only", nargs="+", default=None, help="build only these steps (keep the others)")
    build.add_argument("--threads", type=int, default=DEFAULT_BUILD_THREADS, help="torch intra-op threads")
    build.set_defaults(func=_cmd_build)
    ev = sub.add_parser("eval", help="judge accuracy, CLIPScore, FID and retrieval of the world's models")
    ev.add_argument("--world", default=str(COMMITTED_WORLD), help="world directory (default: the committed one)")
    ev.add_argument("--samples", type=int, default=200, help="prompts per model")
    ev.add_argument("--heldout-samples", type=int, default=100, help="prompts with held-out pairs per model")
    ev.add_argument("--only", nargs="+", default=None, help="only these rows")
    ev.add_argument("--json", default=None, help="also write the results here")
    ev.add_argument("--threads", type=int, default=DEFAULT_BUILD_THREADS)
    ev.set_defaults(func=_cmd_eval)
    cal = sub.add_parser(
        "calibrate", help="k-table calibration samples: cached large images refined by the small at each k, judged"
    )
    cal.add_argument("--world", default=str(COMMITTED_WORLD), help="world directory (default: the committed one)")
    cal.add_argument("--cached", type=int, default=200, help="large-model images in the cache")
    cal.add_argument("--queries", type=int, default=200, help="related queries (rephrase / vary / new)")
    cal.add_argument("--small", default="small", choices=("small", "small2"), help="the refining model")
    cal.add_argument("--total-steps", type=int, default=50, help="T")
    cal.add_argument(
        "--k", type=int, nargs="+", default=None, help="the k to refine at (default: MoDM's 5 10 15 20 25 30)"
    )
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--samples-out", required=True, help="CSV or parquet of (score, k, quality, full_quality)")
    cal.add_argument(
        "--clip-samples-out",
        default=None,
        help="also write samples graded by the second CLIP's CLIPScore (MoDM's own Q) here",
    )
    cal.add_argument("--json", default=None, help="also write per-k judge accuracy here")
    cal.add_argument("--threads", type=int, default=DEFAULT_BUILD_THREADS)
    cal.set_defaults(func=_cmd_calibrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except (WorldFormatError, ValueError, FileNotFoundError) as err:
        print(f"modm world: error: {err}", file=sys.stderr)
        return 2
