"""``modm-loadgen`` / ``python -m loadgen.cli``: run, report, compare, sweep.

    modm-loadgen run --trace prompts.tsv --sessions --arrival poisson --rate 6 -n 200 --url http://127.0.0.1:8000 \
        --reference-url http://127.0.0.1:8001 --out runs/modm
    modm-loadgen report runs/modm runs/vanilla --plots-dir runs/plots
    modm-loadgen compare runs/modm runs/vanilla runs/nirvana --baseline vanilla --json runs/compare.json
    modm-loadgen sweep --trace prompts.tsv --sessions --rates 2,4,6,8 -n 100 --url ... --reference-latency-s 3.1 \
        --out runs/sweep
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

from pydantic import ValidationError

from loadgen.client import StopReason
from loadgen.config import ClientConfig, RunConfig
from loadgen.constants import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_MAX_CONSECUTIVE_FAILURES,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_REFERENCE_PROBES,
    DEFAULT_REQUEST_TIMEOUT_S,
    DEFAULT_STATS_POLL_PERIOD_S,
)
from loadgen.protocol import wait_until_ready
from loadgen.runner import run
from loadgen.sweep import run_sweep
from modm.workload.compare import compare_runs, format_comparison
from modm.workload.config import ArrivalConfig, ArrivalKind, SessionConfig, TraceConfig, TraceFormat
from modm.workload.constants import DEFAULT_SEED
from modm.workload.plots import plot_latency_cdf, plot_slo_vs_rate, plot_timeline
from modm.workload.report import format_summary
from modm.workload.runs import load_run

__all__ = ["build_parser", "main"]


def _add_workload_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("workload")
    g.add_argument("--trace", type=Path, required=True, help="metadata.parquet, meta_data.json, .tsv/.csv or .txt")
    g.add_argument("--format", choices=[f.value for f in TraceFormat], default=TraceFormat.AUTO.value)
    g.add_argument("-n", "--n-requests", type=int, default=1000, help="measured requests")
    g.add_argument("--warm-up", type=int, default=0, help="requests sent first and left out of the report")
    g.add_argument("--start-row", type=int, default=None, help="default: 50000 for DiffusionDB, else 0")
    g.add_argument("--prompt-column", default="prompt")
    g.add_argument("--sessions", action="store_true", help="impose the session model (prompt lists)")
    g.add_argument("--session-users", type=int, default=SessionConfig().active_users)
    g.add_argument("--session-mean-edits", type=float, default=SessionConfig().mean_edits)
    g.add_argument("--seed", type=int, default=DEFAULT_SEED)
    g.add_argument("--n-workers", type=int, default=1, help="load-generator processes sharing the workload")
    g.add_argument("--worker-id", type=int, default=0)


def _add_client_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("server and client")
    g.add_argument("--url", required=True, help="server base URL")
    g.add_argument("--name", default=None, help="run name (default: the output directory's name)")
    g.add_argument("--out", type=Path, required=True, help="output directory")
    g.add_argument("--size", default=DEFAULT_IMAGE_SIZE)
    g.add_argument("--steps", type=int, default=None)
    g.add_argument("--forward-trace-seed", action="store_true")
    g.add_argument("--forward-trace-steps", action="store_true")
    g.add_argument(
        "--seed-from-row",
        action="store_true",
        help="send each request's trace row as its seed (same seed per prompt in every run)",
    )
    g.add_argument("--tenant", default=None)
    g.add_argument("--api-key-env", default=None, help="environment variable holding the bearer key")
    g.add_argument("--timeout-s", type=float, default=DEFAULT_REQUEST_TIMEOUT_S, help="per-request limit")
    g.add_argument("--max-duration-s", type=float, default=None, help="limit on the whole run")
    g.add_argument("--max-in-flight", type=int, default=DEFAULT_MAX_IN_FLIGHT)
    g.add_argument("--max-consecutive-failures", type=int, default=DEFAULT_MAX_CONSECUTIVE_FAILURES)
    g.add_argument("--stats-period-s", type=float, default=DEFAULT_STATS_POLL_PERIOD_S)
    g.add_argument("--no-stats", action="store_true", help="do not poll /v1/stats")
    g.add_argument("--no-progress", action="store_true")
    g.add_argument(
        "--keep-images",
        action="store_true",
        help="save each image under OUT/images; the records' path column feeds `modm quality`",
    )
    g.add_argument("--wait-ready-s", type=float, default=0.0, help="wait this long for /healthz before starting")
    r = p.add_argument_group("SLO reference (standalone large-model latency)")
    r.add_argument("--reference-latency-s", type=float, default=None)
    r.add_argument("--reference-url", default=None, help="vanilla server to measure it on, one request at a time")
    r.add_argument("--reference-probes", type=int, default=DEFAULT_REFERENCE_PROBES)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modm-loadgen", description="Load generator for modm's images API.")
    sub = parser.add_subparsers(dest="command", required=True)

    p_run = sub.add_parser("run", help="send a workload, write records.parquet + summary")
    _add_workload_args(p_run)
    _add_client_args(p_run)
    g = p_run.add_argument_group("arrivals")
    g.add_argument("--arrival", choices=[k.value for k in ArrivalKind], default=ArrivalKind.POISSON.value)
    g.add_argument("--rate", type=float, default=None, help="poisson rate / fluctuating mean, req/min")
    g.add_argument("--speed", type=float, default=1.0, help="replay speed factor")
    g.add_argument("--min-rate", type=float, default=1.0, help="ramp start, req/min")
    g.add_argument("--max-rate", type=float, default=None, help="ramp end, req/min")
    g.add_argument("--amplitude", type=float, default=0.5, help="fluctuating: relative swing of the rate")
    g.add_argument("--period-s", type=float, default=600.0, help="fluctuating: period of the swing")
    g.add_argument("--concurrency", type=int, default=1, help="closed-loop clients")

    p_report = sub.add_parser("report", help="summaries and plots of finished runs")
    p_report.add_argument("runs", nargs="+", type=Path, help="run directories")
    p_report.add_argument("--reference-latency-s", type=float, default=None, help="override the stored reference")
    p_report.add_argument("--plots-dir", type=Path, default=None)
    p_report.add_argument("--json", type=Path, default=None, help="write the summaries here")

    p_compare = sub.add_parser("compare", help="ratio table of several runs against a baseline run")
    p_compare.add_argument("runs", nargs="+", type=Path)
    p_compare.add_argument("--baseline", required=True, help="name of the baseline run (e.g. vanilla)")
    p_compare.add_argument(
        "--reference-latency-s",
        type=float,
        default=None,
        help="one reference for every run (default: each run's stored one)",
    )
    p_compare.add_argument("--json", type=Path, default=None)

    p_sweep = sub.add_parser("sweep", help="Poisson-rate sweep against one server, with the SLO plot")
    _add_workload_args(p_sweep)
    _add_client_args(p_sweep)
    p_sweep.add_argument("--rates", required=True, help="comma-separated req/min, e.g. 2,4,6,8")
    p_sweep.add_argument(
        "--shared-tenant",
        action="store_true",
        help="send every point as the same tenant (default: one tenant per point, so each point "
        "starts with a cold cache)",
    )
    return parser


def _run_config(args: argparse.Namespace, arrival: ArrivalConfig) -> RunConfig:
    api_key = None
    if args.api_key_env is not None:
        api_key = os.environ.get(args.api_key_env)
        if api_key is None:
            raise ValueError(f"--api-key-env {args.api_key_env}: the variable is not set")
    return RunConfig(
        name=args.name or args.out.name,
        trace=TraceConfig(
            path=args.trace,
            format=TraceFormat(args.format),
            n_requests=args.n_requests,
            warm_up=args.warm_up,
            start_row=args.start_row,
            prompt_column=args.prompt_column,
        ),
        sessions=SessionConfig(active_users=args.session_users, mean_edits=args.session_mean_edits)
        if args.sessions
        else None,
        arrival=arrival,
        client=ClientConfig(
            url=args.url,
            size=args.size,
            steps=args.steps,
            forward_trace_seed=args.forward_trace_seed,
            forward_trace_steps=args.forward_trace_steps,
            seed_from_row=args.seed_from_row,
            tenant=args.tenant,
            api_key=api_key,
            request_timeout_s=args.timeout_s,
            max_duration_s=args.max_duration_s,
            max_in_flight=args.max_in_flight,
            max_consecutive_failures=args.max_consecutive_failures,
            stats_poll_period_s=None if args.no_stats else args.stats_period_s,
            progress=not args.no_progress,
            image_dir=args.out / "images" if args.keep_images else None,
        ),
        seed=args.seed,
        n_workers=args.n_workers,
        worker_id=args.worker_id,
        reference_latency_s=args.reference_latency_s,
        reference_url=args.reference_url,
        reference_probes=args.reference_probes,
        out_dir=args.out,
    )


def _wait_ready(config: RunConfig, wait_s: float) -> None:
    if wait_s > 0:
        asyncio.run(wait_until_ready(config.client, wait_s))


def _cmd_run(args: argparse.Namespace) -> int:
    arrival = ArrivalConfig(
        kind=ArrivalKind(args.arrival),
        speed=args.speed,
        rate_per_min=args.rate,
        min_rate_per_min=args.min_rate,
        max_rate_per_min=args.max_rate,
        amplitude=args.amplitude,
        period_s=args.period_s,
        concurrency=args.concurrency,
    )
    config = _run_config(args, arrival)
    _wait_ready(config, args.wait_ready_s)
    artifacts = run(config)
    print(format_summary(artifacts.summary))
    print(f"wrote {config.out_dir}")
    return 1 if artifacts.result.stop_reason is StopReason.SERVER_UNRESPONSIVE else 0


def _cmd_report(args: argparse.Namespace) -> int:
    runs = [load_run(path) for path in args.runs]
    summaries = [r.summarize(args.reference_latency_s) for r in runs]
    for summary in summaries:
        print(format_summary(summary))
    if args.plots_dir is not None:
        reference = args.reference_latency_s or next(
            (s.reference_latency_s for s in summaries if s.reference_latency_s), None
        )
        plot_latency_cdf(
            {r.name: r.records for r in runs}, args.plots_dir / "latency_cdf.png", reference_latency_s=reference
        )
        for r in runs:
            plot_timeline(r.records, r.stats, args.plots_dir / f"timeline_{r.name}.png")
        sweeps = defaultdict(list)  # runs named "<system>@<rate>" at Poisson rates form one line each
        for r, summary in zip(runs, summaries):
            if r.poisson_rate_per_min is not None:
                sweeps[r.name.split("@")[0]].append((r.poisson_rate_per_min, summary))
        if sweeps:
            plot_slo_vs_rate(sweeps, args.plots_dir / "slo_vs_rate.png")
        print(f"wrote plots to {args.plots_dir}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([s.model_dump(mode="json") for s in summaries], indent=2))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    summaries = [load_run(path).summarize(args.reference_latency_s) for path in args.runs]
    comparison = compare_runs(summaries, args.baseline)
    print(format_comparison(comparison))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(comparison.model_dump(mode="json"), indent=2))
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    try:
        rates = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        raise ValueError(f"--rates must be comma-separated numbers, got {args.rates!r}") from None
    config = _run_config(args, ArrivalConfig(kind=ArrivalKind.POISSON, rate_per_min=rates[0] if rates else 1.0))
    _wait_ready(config, args.wait_ready_s)
    result = run_sweep(config, rates, isolate_tenants=not args.shared_tenant)
    for rate, summary in result.points:
        slo = "  ".join(f"{k} {v:.1%}" for k, v in summary.slo_attainment.items()) or "no reference latency"
        thr = "-" if summary.throughput_req_per_min is None else f"{summary.throughput_req_per_min:.2f}"
        print(f"rate {rate:g} req/min: throughput {thr} req/min, SLO {slo}")
    print(f"wrote {config.out_dir}")
    return 0


def _describe_validation_error(error: dict) -> str:
    where = ".".join(map(str, error["loc"]))
    return f"{where}: {error['msg']} (got {error['input']!r:.80})" if where else error["msg"]


_COMMANDS = {"run": _cmd_run, "report": _cmd_report, "compare": _cmd_compare, "sweep": _cmd_sweep}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except ValidationError as err:
        details = "; ".join(_describe_validation_error(e) for e in err.errors())
        print(f"modm-loadgen {args.command}: invalid settings: {details}", file=sys.stderr)
    except (ValueError, TimeoutError, RuntimeError) as err:
        print(f"modm-loadgen {args.command}: error: {err}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
