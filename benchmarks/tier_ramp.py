"""The Serve app on the trained world's models switching small-model tiers under a rising request rate (issue 20).

The world system (modm/world/system.yaml: the SD3-class large model, the world CLIP retrieving text->image) with two
small-model tiers, `small` (the SDXL-class world model, widths 16/32) then `small2` (8/16: 1.6x cheaper per step),
on a local Ray cluster, through HTTP. A world trace (users rephrasing and varying their scenes) arrives on MoDM's
increasing-load schedule (loadgen's RAMP: rate = min + (max - min) * sigmoid), and every --sample-s the script
records the chosen tier and the monitor's inputs (/v1/stats) and each model deployment's RUNNING replicas
(serve.status()). Afterwards the world judge scores the images each tier refined (the answer's `modm.tier`) and
the large model's (modm.world.served).

The models run one request at a time (no batching), so the monitor weighs each with its configured batch-1
latency: each pipeline's per-step cost from the world build (weights/step_costs) times the steps, plus
--overhead-s for text encoding and decoding. The switch point is then a pure function of R, H and P(k) (the tier
policy's budget share is linear in R) and is printed before the run at --assumed-hit-rate; the run's own H decides.
On this 2-core machine the N "GPUs" share two cores, so the default headroom is lower than MoDM's 0.9 to move tiers
at a rate the machine can serve; the timeline says what happened at that setting, not what a GPU cluster would do.

    .venv/bin/python benchmarks/tier_ramp.py --out benchmarks/results/tier_ramp.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
TIERS = ("small", "small2")
DEPLOYMENTS = {"large": "LargeModel", "small": "SmallModel", "small2": "SmallModel2"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, default=REPO / "modm/world/weights")
    parser.add_argument("--budget", type=int, default=2, help="N: model replicas shared by large and the tiers")
    parser.add_argument("--headroom", type=float, default=0.5, help="monitor.headroom (MoDM: 0.9)")
    parser.add_argument("--window-s", type=float, default=10.0, help="monitor window")
    parser.add_argument("--min-rate", type=float, default=20.0, help="ramp start, req/min")
    parser.add_argument("--max-rate", type=float, default=120.0, help="ramp end, req/min")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--users", type=int, default=8, help="users of the world trace")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--overhead-s", type=float, default=0.05, help="per generation beyond the denoising steps")
    parser.add_argument("--assumed-hit-rate", type=float, default=0.5, help="H of the printed prediction")
    parser.add_argument("--sample-s", type=float, default=2.0)
    parser.add_argument("--bin-s", type=float, default=30.0, help="timeline rows")
    parser.add_argument("--work", type=Path, default=REPO / "runs/tier_ramp")
    parser.add_argument("--out", type=Path, default=None, help="JSON result")
    return parser


def profiled_latencies(world: Path, steps: int, overhead_s: float) -> dict[str, float]:
    """Batch-1 seconds per full generation of each world pipeline, from the build's measured per-step costs."""
    costs = json.loads((world / "step_costs" / "step_costs.json").read_text(encoding="utf-8"))
    return {role: round(steps * costs[f"{role}_step_ms"] / 1000 + overhead_s, 3) for role in ("large", *TIERS)}


def tiered_system(args: argparse.Namespace, latencies: dict[str, float]) -> dict:
    from modm.demo import default_config_path

    system = yaml.safe_load(default_config_path().read_text(encoding="utf-8"))
    models = system["models"]
    for role in ("large", "small"):
        models[role].pop("batching", None)  # one request at a time: each model's capacity is its profile
        models[role].update(
            source=str(args.world / role), num_inference_steps=args.steps, profiled_latency_s=latencies[role]
        )
    second = {**models["small"], "source": str(args.world / "small2"), "profiled_latency_s": latencies["small2"]}
    models["small_tiers"] = [second]
    system["embedder"]["model"] = str(args.world / "clip")
    system["cache"]["directory"] = str((args.work / "cache").resolve())
    system["policy"]["total_steps"] = args.steps
    system["monitor"] = {
        "mode": "quality",  # as MoDM's Fig. 10 run
        "gpu_budget": args.budget,
        "window_s": args.window_s,
        "min_small": 0,
        "headroom": args.headroom,
    }
    return system


def predict(system: dict, hit_rate: float) -> dict:
    """The tier policy's switch points for these profiles at hit rate H, with the k table's k spread evenly."""
    from modm.config import config_from_dict
    from modm.policy.monitor import WindowStats
    from modm.policy.tiers import budget_share

    config = config_from_dict(system, "tier-ramp")
    ks = sorted({row.k for row in config.policy.k_table})
    unit = WindowStats(1.0, hit_rate, {k: 1 / len(ks) for k in ks}, config.policy.total_steps)
    models, n, monitor = config.models, config.monitor.gpu_budget, config.monitor
    share = {
        tier: budget_share(unit, 60 / models.large.profiled_latency_s, 60 / spec.profiled_latency_s, n)
        for tier, spec in models.tiers().items()
    }
    return {
        "assumed_hit_rate": hit_rate,
        "k_mix": {k: 1 / len(ks) for k in ks},
        "share_per_req_per_min": share,
        "switch_to_small2_above_req_per_min": monitor.headroom / share["small"],
        "switch_back_below_req_per_min": (monitor.headroom - monitor.tier_hysteresis) / share["small"],
        "small2_carries_up_to_req_per_min": monitor.headroom / share["small2"],
    }


class Sampler:
    """Every `period_s`: the chosen tier and the monitor's inputs from /v1/stats, RUNNING replicas per deployment."""

    def __init__(self, url: str, app: str, period_s: float):
        self.url, self.app, self.period_s = url, app, period_s
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = time.monotonic()

    def start(self) -> Sampler:
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        from ray import serve

        with httpx.Client(base_url=self.url, timeout=10) as http:
            while not self._stop.is_set():
                sample = {"t_s": round(time.monotonic() - self.t0, 2)}
                try:
                    deployments = serve.status().applications[self.app].deployments
                    sample["running"] = {
                        role: deployments[name].replica_states.get("RUNNING", 0) for role, name in DEPLOYMENTS.items()
                    }
                    stats = http.get("/v1/stats").json()
                    monitor = stats.get("monitor") or {}
                    sample.update(
                        tier=stats.get("tier"),
                        targets=(monitor.get("tiers") or {}).get("replicas"),
                        target_large=monitor.get("large"),
                        budget_share=(monitor.get("tiers") or {}).get("budget_share"),
                    )
                except Exception as err:  # a sample lost is context lost, never the run
                    sample["error"] = f"{type(err).__name__}: {err}"[:200]
                self.samples.append(sample)
                self._stop.wait(self.period_s)


def timeline(records, samples: list[dict], bin_s: float, t_offset_s: float) -> list[dict]:
    """Rows of `bin_s`: offered and served rate, hit rate, each tier's hits, the tier chosen most and mean RUNNING
    replicas per deployment. Request times are the loadgen's (arrival_s from its start), sample times are shifted
    by `t_offset_s` onto the same clock."""
    measured = [r for r in records if r.arrival_s is not None]
    end = max((r.arrival_s for r in measured), default=0.0)
    rows = []
    start = 0.0
    while start <= end:
        stop = start + bin_s
        arrived = [r for r in measured if start <= r.arrival_s < stop]
        done = [r for r in arrived if r.outcome.value == "ok"]
        hits = [r for r in done if r.hit]
        inside = [s for s in samples if "running" in s and start <= s["t_s"] - t_offset_s < stop]
        chosen = Counter(s.get("tier") for s in inside).most_common(1)
        rows.append(
            {
                "t_s": start,
                "offered_per_min": 60 * len(arrived) / bin_s,
                "ok": len(done),
                "failed": len(arrived) - len(done),
                "hit_rate": len(hits) / len(done) if done else None,
                "hits_by_tier": dict(Counter(r.tier for r in hits)),
                "tier": chosen[0][0] if chosen else None,
                "running": {role: sum(s["running"][role] for s in inside) / len(inside) for role in DEPLOYMENTS}
                if inside
                else None,
                "p50_latency_s": sorted(r.latency_s for r in done)[len(done) // 2] if done else None,
            }
        )
        start = stop
    return rows


def tier_quality(args: argparse.Namespace, records, truth) -> dict:
    """The world judge on the images each tier refined and on the large model's."""
    from modm.quality import load_rgb
    from modm.world.served import ServedJudge

    judge = ServedJudge(args.world)
    groups: dict[str, list] = {}
    for r in records:
        if r.outcome.value == "ok" and r.path is not None:
            groups.setdefault(r.tier or "large", []).append(r)
    result = {}
    for name, rows in sorted(groups.items()):
        images = [load_rgb(args.work / "run" / r.path) for r in rows]
        row = judge.evaluate(name, images, [r.prompt for r in rows], truth)
        result[name] = {"n": row.samples, "judge": row.judge, "clip_score": row.clip_score, "fid": row.fid}
        result[name]["fid_note"] = row.fid_note
        if name != "large":
            result[name]["mean_k"] = sum(r.k for r in rows) / len(rows)
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import shutil

    import ray
    from ray import serve

    from deployments.app import build_app
    from loadgen import ClientConfig, RunConfig, run
    from loadgen.runner import write_run
    from modm.world.demo_workload import world_demo_requests, write_tsv
    from modm.world.served import trace_truth
    from modm.workload.config import ArrivalConfig, ArrivalKind, TraceConfig
    from tools.local_cluster import free_port, wait_healthy

    args.world = args.world.resolve()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    latencies = profiled_latencies(args.world, args.steps, args.overhead_s)
    system = tiered_system(args, latencies)
    prediction = predict(system, args.assumed_hit_rate)
    print(f"profiled batch-1 latencies (s): {latencies}")
    print(
        f"predicted at H={args.assumed_hit_rate}: small -> small2 above "
        f"{prediction['switch_to_small2_above_req_per_min']:.0f} req/min, back below "
        f"{prediction['switch_back_below_req_per_min']:.0f}; small2 carries up to "
        f"{prediction['small2_carries_up_to_req_per_min']:.0f}",
        flush=True,
    )
    rows = world_demo_requests(args.users, args.requests, seed=0)
    trace = write_tsv(args.work / "world_trace.tsv", [(user, caption.text) for user, _, caption in rows])

    started = time.time()
    load_start = os.getloadavg()
    ray.init(address="local", num_cpus=args.budget + 8, include_dashboard=False, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 900})
        serve.run(build_app({"system": system}), name="tiers", route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, timeout_s=600)
        sampler = Sampler(url, "tiers", args.sample_s).start()
        config = RunConfig(
            name="tier-ramp",
            trace=TraceConfig(path=trace, n_requests=args.requests),
            sessions=None,
            arrival=ArrivalConfig(
                kind=ArrivalKind.RAMP, min_rate_per_min=args.min_rate, max_rate_per_min=args.max_rate
            ),
            client=ClientConfig(
                url=url,
                size="32x32",
                steps=args.steps,
                tenant="ramp",
                request_timeout_s=600,
                stats_poll_period_s=None,
                progress=False,
                seed_from_row=True,
                image_dir=(args.work / "run" / "images").resolve(),
            ),
        )
        load_started = time.monotonic()
        artifacts = run(config)
        sampler.stop()
        stats = httpx.get(f"{url}/v1/stats", timeout=30).json()
    finally:
        ray.shutdown()
    write_run(args.work / "run", artifacts)
    records = [r for r in artifacts.result.records if not r.warm_up]
    rows_out = timeline(records, sampler.samples, args.bin_s, load_started - sampler.t0)
    quality = tier_quality(args, records, trace_truth(rows))
    switches = [
        (a["t_s"], a.get("tier"), b.get("tier"))
        for a, b in zip(sampler.samples, sampler.samples[1:])
        if a.get("tier") and b.get("tier") and a["tier"] != b["tier"]
    ]
    result = {
        "command": "benchmarks/tier_ramp.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "profiled_latency_s": latencies,
        "system": system,
        "prediction": prediction,
        "summary": artifacts.summary.model_dump(mode="json"),
        "tier_switches": switches,
        "timeline": rows_out,
        "quality_by_tier": quality,
        "final_stats": {k: stats.get(k) for k in ("tier", "tier_switches", "hit_rate", "requests", "errors")},
        "samples": sampler.samples,
        "load_average_start_end": [load_start, os.getloadavg()],
        "wall_s": time.time() - started,
    }
    print(f"\n{'t (s)':>6}{'offered/min':>12}{'ok':>5}{'fail':>5}{'H':>6}{'tier':>8}  running L/S/S2   hits by tier")
    for row in rows_out:
        running = row["running"] or {}
        hit_rate = "-" if row["hit_rate"] is None else f"{row['hit_rate']:.2f}"
        print(
            f"{row['t_s']:>6.0f}{row['offered_per_min']:>12.0f}{row['ok']:>5}{row['failed']:>5}{hit_rate:>6}"
            f"{row['tier'] or '-':>8}  {running.get('large', 0):.1f}/{running.get('small', 0):.1f}/"
            f"{running.get('small2', 0):.1f}   {row['hits_by_tier']}"
        )
    print(f"\ntier switches (sampler time, from, to): {switches}")
    print("\nquality by model (world judge on the images each served):")
    for name, row in quality.items():
        fid = "-" if row["fid"] is None else f"{row['fid']:.0f}"
        judged = row["judge"]
        print(
            f"  {name:<7} n={row['n']:<4} all {judged['all']:.3f}  shape+colour {judged['shape_colour']:.3f}"
            f"  colour {judged['colour']:.3f}  CLIP {row['clip_score']:.1f}  FID {fid}"
            + (f"  mean k {row['mean_k']:.1f}" if "mean_k" in row else "")
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
