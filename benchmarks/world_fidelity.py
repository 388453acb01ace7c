"""Benchmark: fidelity in the world — judge accuracy, CLIPScore and FID of the world's large model (SD3-class) run
by DistriFusion (synchronous, and with stale activations after the warm-up), naive patch parallelism and AsyncDiff on
two gloo ranks, beside the same model on one rank; then NIRVANA's hits, replayed at every k it caches.

Every parallel row generates the same prompts from the same seeds as the one-rank row, so PSNR against it (8-bit, dB,
mean over images; inf = identical) says how far each method moves the picture, and the judge says whether the
picture still answers its prompt. The prompts are world eval prompts (`modm.world.eval`), graded exactly as
`modm world eval` grades; FID compares judge features with real world images (2,000 of them).

NIRVANA: the calibration stream of `modm world calibrate` (cache of world prompts; queries that rephrase, vary or
replace a cached scene). The large model's latents after k = 5..25 of T steps are kept for every cached prompt (float16,
as the latent cache keeps them); each query is matched prompt to prompt with the world CLIP's text embeddings and
finished from its best entry's latents at every k, through the serving code (`DiffusionGenerator.resume_batch`).
"granted" is what NIRVANA's own table (cosine > 0.65 .. 0.95 -> k 5 .. 25) would serve: its hits at their k against
the same queries' full runs.

    .venv/bin/python benchmarks/world_fidelity.py --samples 300 --steps 50 --json benchmarks/results/world_fidelity.json

On CPU the ranks share the machine's cores: these rows measure fidelity, not speed (`parallel_bench.py` times them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from modm.config.parallel import ParallelConfig
from modm.world.cli import COMMITTED_WORLD

# Row label -> ParallelConfig fields (world_size 2). warmup_steps is DistriFusion's and AsyncDiff's default (4), the
# value distrifuser's and AsyncDiff's papers use at 50 steps.
METHODS: dict[str, dict] = {
    "distrifusion-sync": dict(method="distrifusion", always_synchronous=True),
    "distrifusion": dict(method="distrifusion"),
    "naive-patch": dict(method="naive_patch"),
    "asyncdiff": dict(method="asyncdiff", model_n=2, stride=1),
}


class Recording:
    """A PromptGenerator that keeps what it generated, for PSNR against the one-rank images."""

    def __init__(self, generate):
        self.generate = generate
        self.images = []

    def __call__(self, prompts, seeds):
        images = list(self.generate(prompts, seeds))
        self.images += images
        return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, default=COMMITTED_WORLD)
    parser.add_argument("--samples", type=int, default=300, help="eval prompts per row (FID needs more than 64)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps T (NIRVANA needs more than 25)")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank (and of the one-rank row)")
    parser.add_argument("--nirvana-cached", type=int, default=200, help="cached prompts (0: no NIRVANA rows)")
    parser.add_argument("--nirvana-queries", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", default="benchmarks/results/world_fidelity.json")
    args = parser.parse_args()
    if args.samples < 1 or args.steps < 2:
        parser.error("--samples must be >= 1 and --steps >= 2")

    from modm.embedding.hf_clip import HfClipEmbedder
    from modm.generation.generator import DiffusionGenerator
    from modm.models.loading import load_pipeline
    from modm.policy import NIRVANA_K_CHOICES
    from modm.policy.retrieval import KTable
    from modm.world.build import REQUIRED_FOR_EVAL
    from modm.world.calibrate import calibration_stream
    from modm.world.eval import REAL_IMAGES_MIN, evaluate_generator, real_features
    from modm.world.fidelity import ParallelWorldGenerator, mean_psnr, nirvana_replay
    from modm.world.format import validate_world_dir
    from modm.world.judge import Judge
    from modm.world.pipelines import pipeline_generator, world_model_spec
    from modm.world.world import World

    torch.set_num_threads(args.threads)
    manifest = validate_world_dir(args.world, tuple(REQUIRED_FOR_EVAL) + ("large",))
    world = World(seed=manifest.seed, image_size=manifest.image_size)
    device = torch.device("cpu")
    judge = Judge.load(args.world / manifest.components["judge"].path, device)
    scorer = HfClipEmbedder(args.world / manifest.components["clip_score"].path, device=device, batch_size=256)
    real = real_features(world, judge, max(args.samples, REAL_IMAGES_MIN))
    large_dir = args.world / manifest.components["large"].path
    spec = world_model_spec(large_dir, "large", device="cpu", num_inference_steps=args.steps)
    pipe = load_pipeline(spec)
    load_before = os.getloadavg()

    def evaluate(name, generate):
        started = time.perf_counter()
        row = evaluate_generator(
            name, generate, world, judge, scorer, args.samples, real=real, batch_size=args.batch_size
        )
        print(f"  {name}: {time.perf_counter() - started:.0f} s", flush=True)
        return row

    single = Recording(pipeline_generator(pipe, steps=args.steps, role="large"))
    rows = [(evaluate("one rank", single), None)]
    for name in args.methods:
        config = ParallelConfig(world_size=2, **METHODS[name])
        with ParallelWorldGenerator(large_dir, config, steps=args.steps, threads=args.threads) as parallel:
            recorded = Recording(parallel)
            rows.append((evaluate(name, recorded), mean_psnr(recorded.images, single.images)))

    nirvana = None
    if args.nirvana_cached > 0:
        if args.steps <= max(NIRVANA_K_CHOICES):
            parser.error(f"NIRVANA caches latents after steps {list(NIRVANA_K_CHOICES)}: use --steps above 25")
        cache, queries = calibration_stream(args.nirvana_cached, args.nirvana_queries)
        started = time.perf_counter()
        nirvana = nirvana_replay(
            cache,
            queries,
            generator=DiffusionGenerator(pipe, spec, "large"),
            total_steps=args.steps,
            embedder=HfClipEmbedder(args.world / manifest.components["clip"].path, device=device, batch_size=256),
            judge=judge,
            k_table=KTable.nirvana(args.steps),
            k_choices=NIRVANA_K_CHOICES,
            scorer=scorer,
            batch_size=args.batch_size,
            progress=lambda line: print(f"  nirvana: {line}", flush=True),
        )
        print(f"  nirvana: {time.perf_counter() - started:.0f} s", flush=True)
    load_after = os.getloadavg()

    head = f"{'run':<20}{'all':>7}{'sh+col':>8}{'shape':>7}{'colour':>8}{'CLIPScore':>10}{'FID':>8}{'PSNR dB':>9}"
    print(f"\nthe world's large model, {args.samples} eval prompts, T = {args.steps}, 2 gloo ranks per parallel row")
    print(head)
    for row, psnr in rows:
        j = row.judge
        fid = f"{row.fid:.1f}" if row.fid is not None else "n/a"
        shown = "-" if psnr is None else ("inf" if psnr == float("inf") else f"{psnr:.1f}")
        print(
            f"{row.name:<20}{j['all']:>7.3f}{j['shape_colour']:>8.3f}{j['shape']:>7.3f}{j['colour']:>8.3f}"
            f"{row.clip_score:>10.2f}{fid:>8}{shown:>9}"
        )
    if nirvana is not None:
        print(f"\nNIRVANA hits: {args.nirvana_cached} cached prompts, {args.nirvana_queries} related queries")
        print(f"{'run':<20}{'all':>7}{'sh+col':>8}{'CLIPScore':>10}")
        print(
            f"{'full run':<20}{nirvana.full_accuracy['all']:>7.3f}{nirvana.full_accuracy['shape_colour']:>8.3f}"
            f"{nirvana.full_clip_score:>10.2f}"
        )
        for k, acc in nirvana.resumed_accuracy.items():
            print(
                f"{f'resumed at k={k}':<20}{acc['all']:>7.3f}{acc['shape_colour']:>8.3f}"
                f"{nirvana.resumed_clip_score[k]:>10.2f}"
            )
        g = nirvana.granted
        if g.get("hits"):
            print(
                f"granted by its table: {g['hits']}/{g['queries']} hits (k: {g['k_counts']}); judge all "
                f"{g['hit_accuracy']['all']:.3f} vs {g['full_accuracy']['all']:.3f} full, CLIPScore "
                f"{g['hit_clip_score']:.2f} vs {g['full_clip_score']:.2f}"
            )
        else:
            print(f"granted by its table: 0/{g['queries']} hits")
    print(f"load average before/after: {load_before[0]:.1f} / {load_after[0]:.1f} on {os.cpu_count()} cores")

    body = {
        "world": str(args.world),
        "samples": args.samples,
        "steps": args.steps,
        "threads_per_rank": args.threads,
        "methods": {name: METHODS[name] for name in args.methods},
        "rows": {
            # PSNR against the one-rank images: null for that row itself, "identical" when every pixel matches.
            row.name: {**row.to_dict(), "psnr_db_vs_one_rank": "identical" if psnr == float("inf") else psnr}
            for row, psnr in rows
        },
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_average_before": load_before,
        "load_average_after": load_after,
    }
    if nirvana is not None:
        body["nirvana"] = {
            "cached": args.nirvana_cached,
            "queries": args.nirvana_queries,
            "full_accuracy": nirvana.full_accuracy,
            "full_clip_score": nirvana.full_clip_score,
            "resumed_accuracy": {str(k): v for k, v in nirvana.resumed_accuracy.items()},
            "resumed_clip_score": {str(k): v for k, v in nirvana.resumed_clip_score.items()},
            "granted": nirvana.granted,
        }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
