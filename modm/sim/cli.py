"""`modm sim` (also `python -m modm.sim.cli`): simulate MoDM, Vanilla and NIRVANA clusters.

    run        one simulated run of a workload (a loadgen trace, or synthetic with --parametric-hit-rate);
               --from-run DIR replays a recorded loadgen run's workload and prints simulated vs measured
    reproduce  MoDM's throughput, SLO-vs-rate and increasing-load experiments, next to the paper's numbers
    tiers      MoDM's increasing load (Fig. 10) with two small-model tiers (SDXL, then SANA-1.6B), the switch
               predicted by the tier policy first; GPU-seconds per image per system
    scale      the simulator's own cost: 10k requests on 16 GPUs, 1M requests on 1000 GPUs
    index-plan the cache index tier's capacity plan: reader replicas needed at N GPUs and MoDM's rates
    profile    fit a latency-profile JSON to a measured loadgen run (the server's per-request timings)

Each prints tables and, with --out, writes JSON and the load generator's run directories and plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from modm.config.schema import Admission, MonitorConfig, MonitorMode, PolicyConfig, SystemMode
from modm.sim.calibrate import profile_from_records
from modm.sim.config import DEFAULT_PARAMETRIC_K_MIX, ParametricHitConfig, SimConfig
from modm.sim.embeddings import load_or_embed
from modm.sim.index_plan import format_index_plan, plan_index_tier, rows_as_dicts
from modm.sim.index_tier import IndexTierConfig
from modm.sim.profiles import resolve_profile
from modm.sim.reproduce import (
    ExperimentSetup,
    format_ramp,
    format_slo,
    format_throughput,
    run_ramp,
    run_slo,
    run_throughput,
    write_json,
)
from modm.sim.simulator import simulate
from modm.sim.tier_ramp import format_prediction, format_tier_ramp, run_tier_ramp
from modm.sim.workload import WorkloadFactory, synthetic_workload, workload_from_run
from modm.workload.compare import compare_runs, format_comparison
from modm.workload.config import ArrivalConfig, ArrivalKind, SessionConfig, TraceConfig
from modm.workload.readers import load_trace
from modm.workload.report import format_summary
from modm.workload.runs import load_run
from modm.workload.sessions import apply_session_model

__all__ = ["build_parser", "main"]

EXPERIMENTS = ("throughput", "slo", "ramp")


# ------------------------------------------------------------------------------------------------ arguments
def _k_mix(text: str) -> dict[int, float]:
    try:
        pairs = [item.split(":") for item in text.split(",") if item.strip()]
        return {int(k): float(w) for k, w in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"k mix must look like 5:0.3,10:0.25,...; got {text!r}") from None


def _rates(text: str) -> list[float]:
    try:
        return [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"rates must be comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster and policy")
    g.add_argument("--window-s", type=float, default=None, help="monitor window (default: MoDM's 180 s)")
    g.add_argument("--cache-capacity", type=int, default=10_000, help="MoDM cache entries (FIFO)")
    g.add_argument("--admission", choices=[a.value for a in Admission], default=Admission.CACHE_ALL.value)
    g.add_argument(
        "--k-table",
        default="minilm-text",
        help="MoDM's score->k table preset (minilm-text matches MiniLM embeddings; modm-clip is CLIP's)",
    )
    g.add_argument("--nirvana-capacity", type=int, default=10_000, help="NIRVANA cache size in prompts")
    g.add_argument(
        "--parametric-hit-rate",
        type=float,
        default=None,
        help="use the parametric hit model with this hit rate instead of retrieval over embeddings",
    )
    g.add_argument(
        "--k-mix",
        type=_k_mix,
        default=None,
        help=f"parametric k weights, e.g. {','.join(f'{k}:{v}' for k, v in DEFAULT_PARAMETRIC_K_MIX.items())}",
    )
    g.add_argument("--seed", type=int, default=42)
    i = p.add_argument_group("cache index tier (modelled when --index-lookup-ms is given)")
    i.add_argument("--index-readers", type=int, default=1, help="CacheIndex replicas serving lookups")
    i.add_argument("--index-lookup-ms", type=float, default=None, help="a reader replica's busy ms per lookup")
    i.add_argument("--index-admission-ms", type=float, default=0.0, help="the writer's ms per admitted entry")
    i.add_argument("--index-commit-ms", type=float, default=0.0, help="the writer's ms per group commit (fsync)")


def _index_tier(args) -> IndexTierConfig | None:
    if args.index_lookup_ms is None:
        return None
    return IndexTierConfig(
        readers=args.index_readers,
        lookup_s=args.index_lookup_ms / 1000.0,
        admission_s=args.index_admission_ms / 1000.0,
        commit_s=args.index_commit_ms / 1000.0,
    )


def _add_workload_options(p: argparse.ArgumentParser, *, default_n: int) -> None:
    g = p.add_argument_group("workload (the load generator's readers and session model)")
    g.add_argument("--trace", type=Path, help="prompt file: DiffusionDB parquet, MJHQ json, TSV/CSV or text")
    g.add_argument("--sessions", action="store_true", help="impose the session model (prompt lists)")
    g.add_argument("-n", "--requests", type=int, default=default_n, help="measured requests")
    g.add_argument("--warm-up", type=int, default=0, help="requests sent first and excluded from reports")
    g.add_argument(
        "--prefill",
        action="store_true",
        help="warm the cache with the warm-up prompts before time 0 instead of sending them "
        "(MoDM's pre-cache of large-model images)",
    )
    g.add_argument(
        "--embeddings",
        type=Path,
        default=None,
        help="prompt-embedding cache (.npz); missing prompts are embedded with MiniLM and added",
    )


def _base_config(
    args,
    *,
    system: SystemMode = SystemMode.MODM,
    n_gpus: int = 4,
    profile=None,
    mode: MonitorMode = MonitorMode.THROUGHPUT,
) -> SimConfig:
    monitor = {"mode": mode}
    if args.window_s is not None:
        monitor["window_s"] = args.window_s
    parametric = None
    if args.parametric_hit_rate is not None:
        parametric = ParametricHitConfig(
            hit_rate=args.parametric_hit_rate, **({"k_mix": args.k_mix} if args.k_mix else {})
        )
    elif args.k_mix:
        raise ValueError("--k-mix only applies with --parametric-hit-rate")
    return SimConfig(
        system=system,
        n_gpus=n_gpus,
        profile=profile or resolve_profile("a40"),
        monitor=MonitorConfig(**monitor),
        policy=PolicyConfig(k_table=args.k_table),
        cache_capacity=args.cache_capacity,
        admission=Admission(args.admission),
        nirvana_capacity_prompts=args.nirvana_capacity,
        parametric=parametric,
        seed=args.seed,
        index_tier=_index_tier(args),
    )


def _workload_factory(args, config: SimConfig) -> WorkloadFactory:
    """The run's requests (modm.workload reader + session model) and, unless hits are parametric, their embeddings."""
    if args.trace is None:
        if config.parametric is None and config.system is not SystemMode.VANILLA:
            raise ValueError(
                "without --trace there are no prompts to retrieve over: give --trace, or "
                "--parametric-hit-rate for a synthetic workload"
            )
        return WorkloadFactory(None, seed=args.seed, default_warm_up=args.warm_up, default_requests=args.requests)
    requests = load_trace(TraceConfig(path=args.trace, n_requests=args.requests, warm_up=args.warm_up))
    if args.sessions:
        requests = apply_session_model(requests, SessionConfig(), seed=args.seed)
    embeddings = None
    if config.parametric is None:
        started = time.perf_counter()
        embeddings = load_or_embed(args.embeddings, [r.prompt for r in requests])
        print(
            f"embeddings: {embeddings.shape[0]} prompts in {time.perf_counter() - started:.1f} s"
            + (f" (cache {args.embeddings})" if args.embeddings else ""),
            file=sys.stderr,
        )
    return WorkloadFactory(
        requests, embeddings, seed=args.seed, default_warm_up=args.warm_up, default_prefill=args.prefill
    )


def _arrival(args) -> ArrivalConfig:
    kind = ArrivalKind(args.arrival)
    return ArrivalConfig(
        kind=kind,
        rate_per_min=args.rate,
        min_rate_per_min=args.min_rate,
        max_rate_per_min=args.max_rate,
        concurrency=args.concurrency,
        speed=args.speed,
        amplitude=args.amplitude,
        period_s=args.period_s,
    )


# -------------------------------------------------------------------------------------------------- commands
def _cmd_run(args) -> int:
    profile = resolve_profile(args.profile)
    config = _base_config(
        args, system=SystemMode(args.system), n_gpus=args.gpus, profile=profile, mode=MonitorMode(args.mode)
    )
    measured = None
    if args.from_run is not None:
        workload, run_config = workload_from_run(args.from_run)
        workload = dataclasses.replace(workload, name=args.name or f"sim-{run_config.name}")
        embeddings, prefill = None, None
        if config.parametric is None and config.system is not SystemMode.VANILLA:
            embeddings = load_or_embed(args.embeddings, workload.prompts)
        measured = load_run(args.from_run)
    else:
        source = _workload_factory(args, config)
        workload, embeddings, prefill = source(_arrival(args), args.name or f"sim-{config.system.value}")
    result = simulate(config, workload, embeddings, prefill)
    summary = result.summary(args.reference_latency_s)
    print(format_summary(summary))
    cost = result.cost()
    print(
        f"  simulator       {cost['requests']} requests on {cost['gpus']} GPUs, {cost['simulated_s']:.0f} s "
        f"simulated in {cost['wall_s']:.2f} s wall ({cost['events_per_s']:,.0f} events/s), "
        f"{len(result.switches)} model switches"
    )
    if measured is not None:
        reference = args.reference_latency_s or measured.metadata.get("reference_latency_s")
        real = measured.summarize(reference)
        simulated = result.summary(reference)
        print()
        print(format_comparison(compare_runs([real, simulated], baseline=real.name)))
        for label, sim_value, real_value in (
            ("throughput", simulated.throughput_req_per_min, real.throughput_req_per_min),
            ("hit rate", simulated.hit_rate, real.hit_rate),
        ):
            gap = "-" if not sim_value or not real_value else f"{(sim_value - real_value) / real_value:+.1%}"
            print(f"  gap {label:<10} simulated vs measured: {gap}")
    if args.out is not None:
        paths = result.write(args.out)
        print(f"wrote {args.out} ({', '.join(sorted(paths))})")
    return 0


def _cmd_reproduce(args) -> int:
    experiments = set(args.experiments or EXPERIMENTS)
    out = args.out
    payload: dict = {}
    base = _base_config(args)
    source = _workload_factory(args, base)
    a40 = ExperimentSetup(resolve_profile(args.small_profile), args.small_gpus, base)
    mi210 = ExperimentSetup(resolve_profile(args.large_profile), args.large_gpus, base)
    started = time.perf_counter()
    if "throughput" in experiments:
        results = [run_throughput(setup, source, out_dir=out and out / "throughput") for setup in (a40, mi210)]
        print("== Throughput at saturation (closed loop, 2 clients per GPU; MoDM in throughput mode)")
        print(format_throughput(results), "\n")
        payload["throughput"] = [
            {
                "setup": r.setup,
                "ratio_vs_vanilla": {n: r.ratio(n) for n in r.rows},
                "summaries": r.rows,
                "wall_s": r.cost_s,
            }
            for r in results
        ]
    if "slo" in experiments:
        slo_options = {
            "n_requests": args.slo_requests,
            "also_throughput_mode": args.slo_throughput_mode,
            "out_dir": out and out / "slo",
        }
        results = [
            run_slo(a40, source, args.small_rates, **slo_options),
            run_slo(mi210, source, args.large_rates, **slo_options),
        ]
        print("== SLO attainment vs Poisson rate (MoDM in quality mode, as MoDM's SLO scripts)")
        print(format_slo(results, args.slo_target))
        payload["slo"] = [
            {
                "setup": r.setup,
                "target": args.slo_target,
                "max_compliant_rate": {
                    n: {k: r.max_compliant_rate(n, k, args.slo_target) for k in ("2x", "4x")} for n in r.points
                },
                "points": {n: [{"rate_per_min": rate, "summary": s} for rate, s in pts] for n, pts in r.points.items()},
                "wall_s": r.cost_s,
            }
            for r in results
        ]
    if "ramp" in experiments:
        result = run_ramp(
            mi210, source, max_rate=args.ramp_max_rate, n_requests=args.ramp_requests, out_dir=out and out / "ramp"
        )
        print("== Increasing load (MoDM Fig. 10; MoDM in quality mode)")
        print(format_ramp(result), "\n")
        payload["ramp"] = {
            "setup": result.setup,
            "max_rate_per_min": result.max_rate,
            "peak_offered_req_per_min": result.peak_offered,
            "peak_completed_req_per_min": result.peak_completed,
            "summaries": result.rows,
            "modm_allocation": result.allocation,
            "wall_s": result.cost_s,
        }
    print(f"reproduction took {time.perf_counter() - started:.1f} s of wall time")
    if out is not None:
        print(f"wrote {write_json(out / 'reproduce.json', payload)}")
    return 0


def _cmd_tiers(args) -> int:
    base = _base_config(args, n_gpus=args.gpus, profile=resolve_profile(args.profile), mode=MonitorMode(args.mode))
    if base.parametric is None:
        base = base.model_copy(update={"parametric": ParametricHitConfig()})
    source = WorkloadFactory(None, seed=args.seed, default_requests=args.requests)
    result = run_tier_ramp(
        base,
        source,
        max_rate=args.max_rate,
        n_requests=args.requests,
        mode=MonitorMode(args.mode),
        out_dir=args.out,
        on_prediction=lambda p: print(format_prediction(p), flush=True),
    )
    print(format_tier_ramp(result))
    print(f"simulated in {result.wall_s:.1f} s of wall time")
    if args.json is not None:
        print(f"wrote {write_json(args.json, result.as_dict())}")
    return 0


def _cmd_scale(args) -> int:
    base = _base_config(args)
    if base.parametric is None:
        base = base.model_copy(update={"parametric": ParametricHitConfig()})
    rows = []
    print(
        f"{'requests':>9} {'GPUs':>5} {'system':<8} {'events':>9} {'wall s':>8} {'events/s':>10} "
        f"{'req/min':>9} {'hit rate':>8}"
    )
    for n_requests, n_gpus in zip(args.requests_list, args.gpus_list):
        for system in args.systems:
            config = base.model_copy(
                update={"system": SystemMode(system), "n_gpus": n_gpus, "profile": resolve_profile(args.profile)}
            )
            config = SimConfig.model_validate(config.model_dump())
            arrival = ArrivalConfig(kind=ArrivalKind.CLOSED_LOOP, concurrency=2 * n_gpus)
            started = time.perf_counter()
            workload = synthetic_workload(n_requests, arrival, seed=args.seed, name=f"{system}-{n_gpus}")
            result = simulate(config, workload)
            metrics = result.fast_metrics()
            total = time.perf_counter() - started
            rows.append(
                {
                    "requests": n_requests,
                    "gpus": n_gpus,
                    "system": system,
                    **result.cost(),
                    "wall_with_setup_s": total,
                    "throughput_req_per_min": metrics.throughput_req_per_min,
                    "hit_rate": metrics.hit_rate,
                }
            )
            print(
                f"{n_requests:9d} {n_gpus:5d} {system:<8} {result.events:9d} {result.wall_s:8.2f} "
                f"{result.events_per_s:10,.0f} {metrics.throughput_req_per_min:9.1f} {metrics.hit_rate:8.1%}"
            )
    if args.out is not None:
        print(f"wrote {write_json(args.out / 'scale.json', {'rows': rows})}")
    return 0


def _cmd_index_plan(args) -> int:
    base = _base_config(args)
    tier = _index_tier(args)
    if tier is None:
        raise ValueError("index-plan needs --index-lookup-ms (a reader replica's measured ms per lookup)")
    rows = plan_index_tier(
        base,
        {name: resolve_profile(name) for name in args.profiles},
        args.gpus_list,
        args.readers_list,
        args.speedups,
        tier,
        n_requests=args.requests,
        load_fraction=args.load_fraction,
        max_utilisation=args.max_utilisation,
    )
    print(format_index_plan(rows, tier, args.max_utilisation))
    if args.out is not None:
        payload = {"tier": tier.model_dump(), "max_utilisation": args.max_utilisation, "rows": rows_as_dicts(rows)}
        print(f"wrote {write_json(args.out / 'index_plan.json', payload)}")
    return 0


def _cmd_profile(args) -> int:
    stored = load_run(args.from_run)
    profile = profile_from_records(stored.records, total_steps=args.total_steps, gpu=args.gpu)
    text = profile.model_dump_json(indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modm sim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="simulate one run")
    run.add_argument("--system", choices=[m.value for m in SystemMode], default="modm")
    run.add_argument(
        "--mode", choices=[m.value for m in MonitorMode], default="throughput", help="MoDM's monitor objective"
    )
    run.add_argument("--gpus", type=int, default=4)
    run.add_argument("--profile", default="a40", help="a40, mi210, or a latency-profile JSON file")
    run.add_argument("--name", default=None)
    run.add_argument(
        "--from-run",
        type=Path,
        default=None,
        help="a loadgen run directory: replay its workload and compare with its measurements",
    )
    run.add_argument(
        "--reference-latency-s",
        type=float,
        default=None,
        help="SLO reference (default: the profile's large-model latency, or the run's)",
    )
    a = run.add_argument_group("arrivals")
    a.add_argument("--arrival", choices=[k.value for k in ArrivalKind], default="poisson")
    a.add_argument("--rate", type=float, default=None, help="poisson/fluctuating rate, req/min")
    a.add_argument("--min-rate", type=float, default=1.0)
    a.add_argument("--max-rate", type=float, default=None)
    a.add_argument("--concurrency", type=int, default=8)
    a.add_argument("--speed", type=float, default=1.0)
    a.add_argument("--amplitude", type=float, default=0.5)
    a.add_argument("--period-s", type=float, default=600.0)
    _add_workload_options(run, default_n=1000)
    _add_model_options(run)
    run.add_argument("--out", type=Path, default=None)
    run.set_defaults(func=_cmd_run)

    rep = sub.add_parser("reproduce", help="MoDM's experiments, next to the paper's numbers")
    rep.add_argument(
        "experiments", nargs="*", choices=[*EXPERIMENTS, []], default=[], help="which experiments (default: all)"
    )
    rep.add_argument("--small-profile", default="a40")
    rep.add_argument("--small-gpus", type=int, default=4)
    rep.add_argument("--small-rates", type=_rates, default=[2, 4, 6, 8, 10, 12, 14])
    rep.add_argument("--large-profile", default="mi210")
    rep.add_argument("--large-gpus", type=int, default=16)
    rep.add_argument("--large-rates", type=_rates, default=[6, 10, 14, 18, 22, 26, 30])
    rep.add_argument("--slo-target", type=float, default=0.9, help="attainment that counts as compliant")
    rep.add_argument(
        "--slo-requests",
        type=int,
        default=1000,
        help="measured requests per SLO point (after the warm-up ones): a prefix of the workload",
    )
    rep.add_argument(
        "--slo-throughput-mode",
        action="store_true",
        help="also run MoDM in throughput mode in the SLO sweep (as modm-tp)",
    )
    rep.add_argument("--ramp-requests", type=int, default=3000, help="requests of the ramp (no warm-up)")
    rep.add_argument(
        "--ramp-max-rate", type=float, default=None, help="ramp ceiling, req/min (default: MoDM's capacity formula)"
    )
    _add_workload_options(rep, default_n=1000)
    _add_model_options(rep)
    rep.add_argument("--out", type=Path, default=None)
    rep.set_defaults(func=_cmd_reproduce)

    tiers = sub.add_parser("tiers", help="MoDM's increasing load with two small-model tiers (parametric hits)")
    tiers.add_argument("--profile", default="mi210-sana", help="a profile with small_tiers (built-in mi210-sana)")
    tiers.add_argument("--gpus", type=int, default=16)
    tiers.add_argument("--mode", choices=[m.value for m in MonitorMode], default=MonitorMode.QUALITY.value)
    tiers.add_argument("--max-rate", type=float, default=26.0, help="the ramp's top, req/min (Fig. 10's: 26)")
    tiers.add_argument("--requests", type=int, default=3000)
    _add_model_options(tiers)
    tiers.add_argument("--json", type=Path, default=None, help="write the result JSON here")
    tiers.add_argument("--out", type=Path, default=None, help="write each system's run directory under here")
    tiers.set_defaults(func=_cmd_tiers)
    scale = sub.add_parser("scale", help="the simulator's cost at cluster scale (parametric hits)")
    scale.add_argument("--requests-list", type=_ints, default=[10_000, 1_000_000])
    scale.add_argument("--gpus-list", type=_ints, default=[16, 1000])
    scale.add_argument("--systems", nargs="+", choices=[m.value for m in SystemMode], default=["modm"])
    scale.add_argument("--profile", default="mi210")
    _add_model_options(scale)
    scale.add_argument("--out", type=Path, default=None)
    scale.set_defaults(func=_cmd_scale)
    plan = sub.add_parser("index-plan", help="the cache index tier's capacity plan at N GPUs (parametric hits)")
    plan.add_argument("--profiles", nargs="+", default=["mi210", "a40"], help="built-in names or profile JSON files")
    plan.add_argument("--gpus-list", type=_ints, default=[16, 100, 1000])
    plan.add_argument("--readers-list", type=_ints, default=[1, 2, 4])
    plan.add_argument("--speedups", type=_rates, default=[1.0, 10.0], help="what-ifs: generation times divided by each")
    plan.add_argument("--requests", type=int, default=20_000, help="requests per simulated run")
    plan.add_argument(
        "--load-fraction", type=float, default=0.9, help="offered rate as a fraction of the GPUs' saturation rate"
    )
    plan.add_argument("--max-utilisation", type=float, default=0.5, help="reader utilisation the plan allows")
    _add_model_options(plan)
    plan.add_argument("--out", type=Path, default=None)
    plan.set_defaults(func=_cmd_index_plan)
    prof = sub.add_parser("profile", help="fit a latency profile to a measured loadgen run (low load)")
    prof.add_argument("--from-run", type=Path, required=True, help="a loadgen run directory")
    prof.add_argument("--gpu", default="measured", help="label of the hardware")
    prof.add_argument("--total-steps", type=int, default=50, help="T the server's k refers to")
    prof.add_argument("--out", type=Path, default=None, help="write the profile JSON here")
    prof.set_defaults(func=_cmd_profile)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "scale" and len(args.requests_list) != len(args.gpus_list):
        parser.error("--requests-list and --gpus-list need the same number of entries")
    try:
        return args.func(args)
    except ValueError as err:
        print(f"modm sim {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
