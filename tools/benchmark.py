"""One command, one workload, one replica budget: MoDM (throughput and quality mode) against serving the large
model alone (vanilla) and against NIRVANA (latent cache, large model only), on a local Ray cluster, through HTTP.
Prints the throughput ratio table and the quality table; writes JSON, records, kept images and plots.

    python -m tools.benchmark --trace ../shared/data/diffusiondb_prompts_10k.tsv --requests 150 \\
        --warm-up 30 --budget 3 --out runs/bench

Each system is deployed as its own Serve app (fresh cache), driven by the load generator in closed loop with the
same prompts (the session model gives DiffusionDB prompt lists MoDM's temporal locality), then deleted. The SLO
reference is the standalone large-model latency, measured on the vanilla app one request at a time. The quality
table scores the images each system served (after warm-up): CLIPScore, Inception Score, and FID against vanilla's
images of the same prompts, as MoDM reports it. With the tiny zoo's random weights those numbers only show that
the pipeline works; give real CLIP/Inception weights (--clip-model, --inception-weights) for meaningful ones.

With --world DIR the systems serve the trained world's models instead (modm/world/system.yaml: the SD3-class large,
the SDXL-class small, the world CLIP retrieving text->image) on a world trace written from the world demo
workload's locality model (users rephrasing and varying their scenes), and the quality table is the world's: judge
accuracy against the scene each prompt named, the second CLIP's CLIPScore, FID on judge features against real world
images, and each system's judge points against vanilla's (modm.world.served):

    python -m tools.benchmark --world modm/world/weights --requests 100 --warm-up 20 --out runs/bench-world
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import yaml

from modm.config import config_from_dict
from modm.demo import default_config_path, ensure_zoo
from modm.policy import MODM_CLIP_TABLE, MODM_TABLE_TOTAL_STEPS, NIRVANA_K_CHOICES
from modm.workload.records import StatsSample
from modm.workload.runs import RECORDS_FILE
from tools.local_cluster import free_port, wait_healthy
from tools.serve_configs import tiny_config_path

SYSTEMS = ("vanilla", "vanilla-accelerated", "modm-throughput", "modm-accelerated", "modm-quality", "nirvana")
REFERENCE_SYSTEM = "vanilla"  # the large model alone: the throughput baseline and the FID reference
# The "-accelerated" systems add what vLLM-Omni or SGLang Diffusion would give a user: a feature cache on each model
# and batching. The kinds are the ones each model class takes (SD3-class large: block caches; SDXL-class small:
# pyramid attention broadcast), the settings the ones that kept quality in the world's per-kind table
# (benchmarks/results/feature_cache_bench.json; README, Feature caches): TaylorSeer every 5 steps, PAB skip range 2.
# Both decide by step alone, so request-level batches share their passes (modm.generation.feature_cache); the step
# engine would give every feature-cached request a pass of its own.
ACCELERATED_FEATURE_CACHES = {
    "large": {"kind": "taylorseer", "cache_interval": 5},
    "small": {"kind": "pyramid_attention_broadcast", "spatial_attention_block_skip_range": 2},
}
ACCELERATED_BATCHING = {"engine": "request", "max_batch_size": 4, "max_wait_ms": 5.0}


def system_variants(
    base: dict,
    budget: int,
    steps: int,
    size: int,
    window_s: float,
    work: Path,
    names: tuple[str, ...] = SYSTEMS,
    batching: dict | None = None,
    feature_caches: dict[str, dict] | None = None,
    accelerated_batching: dict | None = None,
) -> dict[str, dict]:
    """The same models, steps, batching engine and replica budget for every system; only mode and monitor objective
    differ, and the "-accelerated" systems add `feature_caches` (per role; default ACCELERATED_FEATURE_CACHES) and
    `accelerated_batching` (default ACCELERATED_BATCHING)."""
    feature_caches = ACCELERATED_FEATURE_CACHES if feature_caches is None else feature_caches
    accelerated_batching = ACCELERATED_BATCHING if accelerated_batching is None else accelerated_batching
    variants = {}
    for name in names:
        system = json.loads(json.dumps(base))
        accelerated = name.endswith("-accelerated")
        for role in ("large", "small"):
            system["models"][role].update(num_inference_steps=steps, default_size=size)
            engine = accelerated_batching if accelerated else batching
            if engine is not None:
                system["models"][role]["batching"] = dict(engine)
            if accelerated and feature_caches.get(role) is not None:
                system["models"][role]["feature_cache"] = dict(feature_caches[role])
        system["monitor"].update(gpu_budget=budget, window_s=window_s)
        system["cache"]["directory"] = str((work / name / "cache").resolve())
        mode = name.removesuffix("-accelerated")
        if mode in ("vanilla", "nirvana"):  # the large model alone, with NIRVANA's latent cache or none
            system["mode"] = mode
            system["models"].pop("small")
            system["monitor"]["min_small"] = 0
            if mode == "nirvana":
                system["policy"] = {"total_steps": steps}  # its own k table; T must exceed its last snapshot
                if system["embedder"].get("retrieval") == "text-image":  # a CLIP: NIRVANA matches prompt to prompt
                    system["embedder"]["retrieval"] = "text-text"
        else:
            # modm-accelerated: the throughput objective, as the system it accelerates (modm-throughput)
            system["monitor"]["mode"] = "throughput" if accelerated else mode.split("-", 1)[1]
        config_from_dict(system, name)  # fail before deploying anything
        variants[name] = system
    return variants


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trace", type=Path, help="prompt list (TSV/CSV/text) or DiffusionDB parquet")
    parser.add_argument(
        "--world",
        type=Path,
        default=None,
        help="serve the trained world's models (e.g. modm/world/weights) on a world trace, with the world's quality "
        "table; replaces --trace and --zoo",
    )
    parser.add_argument("--world-users", type=int, default=8, help="with --world: users of the world trace")
    parser.add_argument("--world-seed", type=int, default=0, help="with --world: seed of the world trace")
    parser.add_argument("--requests", type=int, default=150, help="measured requests per system")
    parser.add_argument("--warm-up", type=int, default=30, help="requests sent first, left out of the report")
    parser.add_argument("--budget", type=int, default=3, help="model replicas (GPUs) every system gets")
    parser.add_argument("--concurrency", type=int, default=4, help="closed-loop clients")
    parser.add_argument("--size", type=int, default=None, help="image side (default 64; the world's 32 with --world)")
    parser.add_argument("--steps", type=int, default=50, help="T")
    parser.add_argument("--window-s", type=float, default=10.0, help="monitor window (short runs need short ones)")
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help="comma-separated; nirvana needs --steps above 25 (it caches latents after 5..25)",
    )
    parser.add_argument(
        "--batching",
        choices=("none", "request", "step"),
        default="none",
        help="the batching engine of every system's model replicas (models.<role>.batching.engine)",
    )
    parser.add_argument(
        "--max-batch-size", type=int, default=4, help="with --batching and the -accelerated systems: requests per batch"
    )
    parser.add_argument(
        "--k-table",
        type=k_table_arg,
        default=None,
        help='policy.k_table of every MoDM system, "SCORE:K,..." from the highest score down (e.g. "0.80:30"); '
        "default: the base config's (the world's modm/world/system.yaml with --world)",
    )
    parser.add_argument(
        "--feature-cache-large",
        type=json.loads,
        default=ACCELERATED_FEATURE_CACHES["large"],
        help="JSON models.large.feature_cache of the -accelerated systems",
    )
    parser.add_argument(
        "--feature-cache-small",
        type=json.loads,
        default=ACCELERATED_FEATURE_CACHES["small"],
        help="JSON models.small.feature_cache of modm-accelerated",
    )
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=ACCELERATED_BATCHING["max_wait_ms"],
        help="with --batching and the -accelerated systems: how long a batch waits for company",
    )
    parser.add_argument("--zoo", type=Path, default=Path(".modm/zoo"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    sweep = parser.add_argument_group("SLO sweep (optional)")
    sweep.add_argument(
        "--sweep-rates",
        type=float,
        nargs="+",
        default=None,
        help="Poisson rates (req/min) to run on every system after its closed-loop run",
    )
    sweep.add_argument("--sweep-requests", type=int, default=40, help="requests per sweep point")
    quality = parser.add_argument_group("quality table (images kept under OUT/<system>/images)")
    quality.add_argument("--no-quality", dest="quality", action="store_false", help="keep no images, skip the table")
    quality.add_argument(
        "--clip-model",
        default=None,
        help="open_clip model for CLIPScore (default: the zoo's tiny CLIP, local-dir:ZOO/clip)",
    )
    quality.add_argument("--clip-pretrained", default=None, help="open_clip pretrained tag, e.g. openai")
    quality.add_argument(
        "--inception-weights",
        default="random",
        choices=["random", "IMAGENET1K_V1", "file"],
        help="random: no download, plumbing only; IMAGENET1K_V1 for real FID/IS",
    )
    quality.add_argument("--inception-path", type=Path, default=None, help="state dict for --inception-weights file")
    quality.add_argument(
        "--fid-dims",
        type=int,
        default=64,
        choices=[64, 192, 768, 2048],
        help="Inception feature layer; 2048 is the standard FID but needs > 2048 images per system",
    )
    return parser


def run_benchmark(args: argparse.Namespace, port: int) -> dict:
    """Deploy, drive and delete each system in turn on the running Ray + Serve (HTTP on `port`)."""
    from ray import serve

    from deployments.app import build_app
    from deployments.usage_log import forget_departed
    from loadgen import ClientConfig, RunConfig, run
    from loadgen.runner import write_run
    from modm.workload.compare import compare_runs, format_comparison
    from modm.workload.config import ArrivalConfig, ArrivalKind, SessionConfig, TraceConfig

    chosen = [s.strip() for s in args.systems.split(",") if s.strip()]
    if set(chosen) - set(SYSTEMS) or REFERENCE_SYSTEM not in chosen:
        raise ValueError(
            f"--systems must include {REFERENCE_SYSTEM} (the baseline) and name only {SYSTEMS}, got {chosen}"
        )
    if "nirvana" in chosen and args.steps <= max(NIRVANA_K_CHOICES):
        raise ValueError(
            f"nirvana caches latents after steps {list(NIRVANA_K_CHOICES)}: use --steps above "
            f"{max(NIRVANA_K_CHOICES)} or leave nirvana out of --systems"
        )
    if (args.trace is None) == (args.world is None):
        raise ValueError("give --trace (the tiny zoo's models) or --world (the world's models and trace), not both")
    chosen.sort(key=lambda s: s != REFERENCE_SYSTEM)  # vanilla first: it measures the SLO reference latency
    shutil.rmtree(args.out, ignore_errors=True)
    base, truth = base_system(args)
    if args.k_table is not None:
        base = with_k_table(base, args.k_table)
    batching, accelerated_batching = batching_args(args)
    variants = system_variants(
        base,
        args.budget,
        args.steps,
        args.size,
        args.window_s,
        args.out,
        tuple(chosen),
        batching=batching,
        feature_caches={"large": args.feature_cache_large, "small": args.feature_cache_small},
        accelerated_batching=accelerated_batching,
    )

    summaries, reference_s, runs, sweeps = [], None, {}, {}
    for name in chosen:
        started = time.monotonic()
        forget_departed(name)  # an earlier run of this name's stopped replicas
        serve.run(build_app({"system": variants[name]}), name=name, route_prefix=f"/{name}", blocking=False)
        url = f"http://127.0.0.1:{port}/{name}"
        try:
            wait_healthy(url)
            config = RunConfig(
                name=name,
                trace=TraceConfig(path=args.trace, n_requests=args.requests, warm_up=args.warm_up),
                # A world trace has its users' locality already (and its prompts must stay the captions judged).
                sessions=None if truth is not None else SessionConfig(),
                arrival=ArrivalConfig(kind=ArrivalKind.CLOSED_LOOP, concurrency=args.concurrency),
                client=ClientConfig(
                    url=url,
                    size=f"{args.size}x{args.size}",
                    steps=args.steps,
                    tenant="bench",
                    request_timeout_s=600,
                    stats_poll_period_s=2.0,
                    progress=False,
                    seed_from_row=True,
                    image_dir=(args.out / name / "images").resolve() if args.quality else None,
                ),
                reference_latency_s=reference_s,
                reference_url=url if reference_s is None else None,
            )
            artifacts = run(config)
            usage = model_usage(name, variants[name])
            if args.sweep_rates:
                sweeps[name] = slo_sweep(args, config, reference_s or artifacts.reference_latency_s, name)
        finally:
            serve.delete(name)
        reference_s = reference_s or artifacts.reference_latency_s
        write_run(args.out / name, artifacts)
        summaries.append(artifacts.summary)
        runs[name] = {
            "summary": artifacts.summary.model_dump(mode="json"),
            "wall_s": time.monotonic() - started,
            "cost_per_image": cost_per_image(artifacts.summary, variants[name]["monitor"]["gpu_budget"], usage),
            "batching": run_batching_view(artifacts.result.stats),
        }
        print(f"{name}: done in {time.monotonic() - started:.0f}s", flush=True)

    comparison = compare_runs(summaries, baseline=REFERENCE_SYSTEM)
    print(
        f"\nworkload: {args.trace.name}, {args.requests} measured requests (+{args.warm_up} warm-up), "
        f"{'world users' if truth is not None else 'sessions'}; "
        f"budget {args.budget} model replicas; {args.size}px, T={args.steps}; closed loop x{args.concurrency}; "
        f"SLO reference {reference_s:.2f}s (vanilla, one request at a time)\n"
    )
    print(format_comparison(comparison))
    print("\ncost per served image (GPU-seconds; busy over live and stopped model replicas; joules with NVML):")
    for name, entry in runs.items():
        cost = entry["cost_per_image"]
        if cost["provisioned_gpu_s"] is None:
            print(f"  {name:<8} no images")
            continue
        joules = "-" if cost["joules"] is None else f"{cost['joules']:.0f} J"
        print(f"  {name:<8} provisioned {cost['provisioned_gpu_s']:7.2f}  busy {cost['busy_gpu_s']:7.2f}  {joules}")
    print("\nmean batch size per model pass (the replicas' moving mean, averaged over the run's /v1/stats polls):")
    for name, entry in runs.items():
        views = entry["batching"] or {}
        means = {role: view.get("mean_batch_size") for role, view in views.items() if view}
        shown = ", ".join(f"{role} {mean:.2f}" for role, mean in means.items() if mean is not None)
        print(f"  {name:<8} {shown or 'not batching'}")
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "reference_latency_s": reference_s,
        "comparison": comparison.model_dump(mode="json"),
        "runs": runs,
    }
    if sweeps:
        result["slo_sweep"] = sweep_table(args, sweeps)
    if args.quality:
        result["quality"] = quality_table(args, chosen) if truth is None else world_quality_table(args, chosen, truth)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmark.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"\nwrote {args.out / 'benchmark.json'} and per-system records/plots under {args.out}")
    return result


def batching_args(args: argparse.Namespace) -> tuple[dict | None, dict]:
    """The plain systems' `models.<role>.batching` (None: the base config's) and the -accelerated systems', from
    --batching, --max-batch-size and --max-wait-ms."""
    limits = {"max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms}
    batching = None if args.batching == "none" else {"engine": args.batching, **limits}
    return batching, {**ACCELERATED_BATCHING, **limits}


def run_batching_view(samples: list[StatsSample]) -> dict | None:
    """Per model role, what the replicas reported of their batches over the run: `mean_batch_size`, the mean over
    the run's /v1/stats polls of the reported moving mean (of a replica's last few passes, so one poll alone reads
    the run's last passes: at its end, the stragglers' batches of one); `polls`, how many polls carried it; and the
    last poll's `max_batch_size` and `seconds_per_image_step`. None when no poll carried a batching view."""
    means: dict[str, list[float]] = {}
    last: dict[str, dict] = {}
    for sample in samples:
        if sample.batching_json is None:
            continue
        for role, view in json.loads(sample.batching_json).items():
            if not view:
                continue
            last[role] = view
            if view.get("mean_batch_size") is not None:
                means.setdefault(role, []).append(float(view["mean_batch_size"]))
    if not last:
        return None
    return {
        role: {
            "max_batch_size": view.get("max_batch_size"),
            "mean_batch_size": statistics.fmean(means[role]) if role in means else None,
            "polls": len(means.get(role, [])),
            "seconds_per_image_step": view.get("seconds_per_image_step", {}),
        }
        for role, view in last.items()
    }


def k_table_arg(text: str) -> list[dict]:
    """ "0.80:30,0.70:10" -> [{min_score: 0.8, k: 30}, {min_score: 0.7, k: 10}] (the schema checks the order)."""
    rules = []
    for part in text.split(","):
        try:
            score, k = part.split(":")
            rules.append({"min_score": float(score), "k": int(k)})
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part.strip()!r} is not SCORE:K (e.g. 0.80:30)") from None
    return rules


def with_k_table(base: dict, rules: list[dict]) -> dict:
    """`base` serving `rules` as its k table; a table the schema refuses is refused here, before any app is up."""
    system = {**base, "policy": {**base.get("policy", {}), "k_table": rules}}
    config_from_dict(system, "--k-table")
    return system


def base_system(args: argparse.Namespace) -> tuple[dict, dict | None]:
    """The system every variant starts from, and with --world what each prompt of the world trace asked for (the
    trace is written to OUT/world_trace.tsv and becomes args.trace)."""
    if args.world is None:
        args.size = args.size or 64
        serve_config = yaml.safe_load(tiny_config_path().read_text(encoding="utf-8"))
        base = serve_config["applications"][0]["args"]["system"]
        ensure_zoo(config_from_dict(base), args.zoo)
        for role in ("large", "small"):
            base["models"][role]["source"] = str((args.zoo / role).resolve())
        return base, None
    from modm.world.demo_workload import world_demo_requests, write_tsv
    from modm.world.format import validate_world_dir
    from modm.world.served import trace_truth

    world = args.world.resolve()
    manifest = validate_world_dir(world, ("clip", "large", "small", "judge", "clip_score"))
    args.size = args.size or manifest.image_size
    base = yaml.safe_load(default_config_path().read_text(encoding="utf-8"))
    for role in ("large", "small"):
        base["models"][role]["source"] = str(world / manifest.components[role].path)
    base["embedder"]["model"] = str(world / manifest.components["clip"].path)
    rows_needed = args.warm_up + args.requests + (args.sweep_requests * len(args.sweep_rates or ()))
    rows = world_demo_requests(args.world_users, rows_needed, args.world_seed)
    args.out.mkdir(parents=True, exist_ok=True)
    args.trace = write_tsv(args.out / "world_trace.tsv", [(user, caption.text) for user, _, caption in rows])
    return base, trace_truth(rows)


def model_usage(app: str, system: dict) -> list[dict]:
    """Busy seconds, images and joules of every model replica of the run: the live ones (deployments/model.py
    usage_stats) and those the monitor stopped mid-run (deployments/usage_log.py)."""
    from ray import serve

    from deployments.app import deployment_names
    from deployments.usage_log import departed_usage
    from modm.config import config_from_dict

    names = [n for n in deployment_names(config_from_dict(system)) if n.startswith(("LargeModel", "SmallModel"))]
    usage = []
    for name in names:
        handle = serve.get_deployment_handle(name, app_name=app)
        usage += handle.broadcast("usage_stats").results()
    return usage + departed_usage(app, names)


def cost_per_image(summary, budget: int, usage: list[dict]) -> dict:
    """GPU-seconds per image: provisioned (the budget's replicas over the makespan, per served image; the monitor only
    moves them between models) and busy (the model replicas' compute per image they computed, live ones and those
    the monitor stopped mid-run); joules per computed image (the GPU's whole draw, idle included) where every
    replica has an NVML counter."""
    images = summary.n_ok
    if not images or summary.makespan_s is None:
        return {"images": images, "provisioned_gpu_s": None, "busy_gpu_s": None, "joules": None}
    energy = [u["energy_j"] for u in usage]
    computed = max(1, sum(u["images"] for u in usage))
    joules = sum(energy) / computed if energy and None not in energy else None
    return {
        "images": images,
        "provisioned_gpu_s": budget * summary.makespan_s / images,
        # Over the images those replicas computed (warm-up and reference requests included).
        "busy_gpu_s": sum(u["busy_s"] for u in usage) / computed,
        "busy_from": f"{len(usage)} model replicas (live and stopped)",
        "joules": joules,
    }


def slo_sweep(args: argparse.Namespace, measured, reference_s: float, name: str) -> list:
    """Poisson arrivals at each --sweep-rates rate on the system just measured, each point with fresh prompts (rows
    after the measured run's, different per point) against the cache that run warmed, as MoDM's SLO runs start
    from a filled cache."""
    from loadgen.sweep import run_sweep
    from modm.workload.config import TraceConfig

    first_row = (measured.trace.start_row or 0) + args.requests + args.warm_up
    points = []
    for i, rate in enumerate(sorted(args.sweep_rates)):  # each point its own rows: a replay would be all hits
        fresh = TraceConfig(
            path=args.trace, n_requests=args.sweep_requests, start_row=first_row + i * args.sweep_requests
        )
        base = measured.model_copy(
            update={
                "trace": fresh,
                "reference_latency_s": reference_s,
                "reference_url": None,
                "out_dir": args.out / name / "sweep",
                "client": measured.client.model_copy(update={"image_dir": None}),
            }
        )
        points += run_sweep(base, [rate], isolate_tenants=False).points
    return points


def sweep_table(args: argparse.Namespace, sweeps: dict[str, list]) -> dict:
    from modm.workload.plots import plot_slo_vs_rate

    plot = plot_slo_vs_rate(sweeps, args.out / "slo_vs_rate.png")
    keys = sorted(
        {k for points in sweeps.values() for _, s in points for k in s.slo_attainment}, key=lambda k: float(k[:-1])
    )
    print(f"\nSLO attainment vs Poisson rate ({args.sweep_requests} requests per point; plot {plot})\n")
    header = f"{'system':<18}{'req/min':>9}" + "".join(f"{'SLO ' + k:>10}" for k in keys) + f"{'hit rate':>10}"
    print(header + "\n" + "-" * len(header))
    rows = []
    for name, points in sweeps.items():
        for rate, summary in points:
            hit = "-" if summary.hit_rate is None else f"{summary.hit_rate:.0%}"
            print(
                f"{name:<18}{rate:>9g}"
                + "".join(f"{summary.slo_attainment.get(k, float('nan')):>10.1%}" for k in keys)
                + f"{hit:>10}"
            )
            rows.append(
                {
                    "system": name,
                    "rate_per_min": rate,
                    "slo_attainment": summary.slo_attainment,
                    "hit_rate": summary.hit_rate,
                    "throughput_per_min": summary.throughput_req_per_min,
                }
            )
    return {"plot": str(plot), "points": rows}


def quality_table(args: argparse.Namespace, systems: list[str]) -> dict:
    """Score the images each system served; FID of each against vanilla's images of the same prompts."""
    from dataclasses import asdict

    from modm.quality import ClipScoreConfig, ClipScorer, InceptionConfig, InceptionFeatureExtractor, load_image_set
    from modm.quality.systems import compare_systems, format_system_table

    image_sets = {name: load_image_set(args.out / name / RECORDS_FILE) for name in systems}
    clip = ClipScoreConfig(
        model=args.clip_model or f"local-dir:{(args.zoo / 'clip').resolve()}",
        pretrained=args.clip_pretrained,
        device="cpu",
    )
    inception = InceptionConfig(
        weights=args.inception_weights, path=args.inception_path, dims=args.fid_dims, device="cpu"
    )
    rows = compare_systems(
        image_sets,
        REFERENCE_SYSTEM,
        [ClipScorer.from_config(clip)],
        InceptionFeatureExtractor.from_config(inception),
        allow_low_rank=True,
    )
    print(
        "\nquality of the served images (after warm-up)"
        + (
            " -- random Inception weights: plumbing only, not comparable to published numbers"
            if args.inception_weights == "random"
            else ""
        )
        + "\n"
    )
    print(format_system_table(rows, REFERENCE_SYSTEM))
    return {
        "reference": REFERENCE_SYSTEM,
        "clip": clip.model_dump(mode="json"),
        "inception": inception.extractor_id,
        "rows": [asdict(row) for row in rows],
    }


def world_quality_table(args: argparse.Namespace, systems: list[str], truth: dict) -> dict:
    """The world's judge on the images each system served (after warm-up), overall and on its hits, with each
    system's judge points against vanilla's (the goal: within 3 points)."""
    from modm.quality import load_image_set, load_rgb
    from modm.world.served import ServedJudge

    judge = ServedJudge(args.world)
    rows, ceiling = [], None
    for name in systems:
        entries = load_image_set(args.out / name / RECORDS_FILE)
        images, prompts = [load_rgb(e.path) for e in entries], [e.prompt for e in entries]
        if name == REFERENCE_SYSTEM:
            ceiling = trace_ceiling(args, judge.servable(images, prompts, truth))
        overall = judge.evaluate(name, images, prompts, truth)
        hits = [i for i, e in enumerate(entries) if e.hit]
        on_hits = judge.evaluate(name, [images[i] for i in hits], [prompts[i] for i in hits], truth) if hits else None
        rows.append(
            {
                "system": name,
                "n": overall.samples,
                "judge": overall.judge,
                "clip_score": overall.clip_score,
                "fid_vs_real": overall.fid,
                "fid_note": overall.fid_note,
                "hits": len(hits),
                "judge_on_hits": on_hits.judge if on_hits else None,
            }
        )
    reference = next(row for row in rows if row["system"] == REFERENCE_SYSTEM)
    for row in rows:
        row["judge_points_vs_vanilla"] = {
            key: 100 * (row["judge"][key] - reference["judge"][key]) for key in ("all", "shape_colour", "colour")
        }
    print(
        "\nquality in the world (judge accuracy against the scene each prompt named; CLIPScore of the second CLIP; "
        "FID on judge features against real world images)\n"
    )
    header = (
        f"{'system':<20}{'n':>5}{'all':>7}{'shp+col':>8}{'colour':>7}{'pts vs van':>11}{'hits':>6}"
        f"{'col@hit':>8}{'CLIP':>7}{'FID':>8}"
    )
    print(header + "\n" + "-" * len(header))
    for row in rows:
        judge, hits = row["judge"], row["judge_on_hits"]
        fid = "-" if row["fid_vs_real"] is None else f"{row['fid_vs_real']:.0f}"
        print(
            f"{row['system']:<20}{row['n']:>5}{judge['all']:>7.3f}{judge['shape_colour']:>8.3f}{judge['colour']:>7.3f}"
            f"{row['judge_points_vs_vanilla']['shape_colour']:>+11.1f}{row['hits']:>6}"
            f"{'-' if hits is None else format(hits['colour'], '.3f'):>8}{row['clip_score']:>7.1f}{fid:>8}"
        )
    if ceiling is not None:
        print(
            f"\nat no quality loss on this trace: {ceiling['servable']:.0%} of requests have an earlier vanilla image"
            f" that already answers them (an oracle retrieval's hit rate); hitting all of them at k={ceiling['k']}"
            f" bounds the model-side gain at {ceiling['gain_bound']:.2f}x (large:small step cost"
            f" {ceiling['large_small_step_ratio']})"
        )
    return {
        "reference": REFERENCE_SYSTEM,
        "kind": "world",
        "world": str(args.world),
        "rows": rows,
        "preserved_quality_ceiling": ceiling,
    }


def trace_ceiling(args: argparse.Namespace, servable: list[bool]) -> dict:
    """The most any retrieval could gain on this trace at vanilla's quality: it may hit only requests that an image
    served earlier (here vanilla's, after warm-up) already answers, each at MoDM's largest k scaled to T (the cheapest
    hit). Refinement losses, misses and the requests in flight only lower it."""
    from modm.policy import hit_cost, throughput_gain_bound
    from modm.world.model_steps import serving_step_ratio

    ratio = serving_step_ratio(Path(args.world))
    k = args.steps * max(rule.k for rule in MODM_CLIP_TABLE) // MODM_TABLE_TOTAL_STEPS
    rate = sum(servable) / len(servable) if servable else 0.0
    return {
        "servable": rate,
        "requests": len(servable),
        "k": k,
        "large_small_step_ratio": ratio,
        "gain_bound": throughput_gain_bound(rate, hit_cost(k, args.steps, ratio)),
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    from ray import serve

    ray.init(address="local", num_cpus=args.budget + 6, include_dashboard=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 900})
        run_benchmark(args, port)
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
