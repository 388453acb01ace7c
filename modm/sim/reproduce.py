"""MoDM's headline experiments, re-run in the simulator (modm.md §5), with the paper's numbers alongside.

1. Throughput: MoDM (throughput mode) vs Vanilla vs NIRVANA at saturation (closed loop, 2 clients per GPU), on
   4 x A40 and 16 x MI210.
2. SLO attainment at 2x and 4x the large model's latency against the Poisson request rate (MoDM in quality
   mode, as MoDM's SLO scripts run it).
3. The increasing-load trace (sigmoid ramp, Fig. 10) on 16 x MI210, with the allocation over time.

Every experiment replays one workload (the same requests, the same offsets) for all three systems.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modm.config.schema import MonitorMode, SystemMode
from modm.roles import ModelRole
from modm.sim.config import SimConfig
from modm.sim.profiles import LatencyProfile
from modm.sim.results import SimResult
from modm.sim.simulator import simulate
from modm.sim.workload import WorkloadFactory
from modm.workload.config import ArrivalConfig, ArrivalKind
from modm.workload.plots import plot_slo_vs_rate
from modm.workload.report import RunSummary

__all__ = [
    "PAPER",
    "ExperimentSetup",
    "RampResult",
    "SloResult",
    "ThroughputResult",
    "format_ramp",
    "format_slo",
    "format_throughput",
    "modm_ramp_max_rate",
    "run_ramp",
    "run_slo",
    "run_throughput",
    "system_configs",
]

# The paper's numbers (modm.md §5) printed next to ours. Throughput ratios are vs Vanilla SD3.5-Large.
PAPER = {
    "throughput_ratio": {"modm": "2.5x (SDXL, DiffusionDB)", "nirvana": "~1.2x", "vanilla": "1.0x"},
    "slo_max_rate": {
        ("A40", 4, "2x"): {"modm": "10", "vanilla": "~5", "nirvana": "~5"},
        ("MI210", 16, "2x"): {"modm": "22", "vanilla": "~14", "nirvana": "~14"},
        ("MI210", 16, "4x"): {"modm": "26", "vanilla": "~14", "nirvana": "~14"},
    },
    "ramp_saturation": {"vanilla": "~10 req/min", "nirvana": "~12 req/min", "modm": "tracks load to 26 req/min"},
}

SYSTEMS = ("modm", "vanilla", "nirvana")


@dataclass(frozen=True)
class ExperimentSetup:
    profile: LatencyProfile
    n_gpus: int
    base: SimConfig  # cache, policy, parametric hits, seed: everything but system, GPUs, profile and monitor mode

    @property
    def label(self) -> str:
        return f"{self.n_gpus}x{self.profile.gpu}"


def system_configs(setup: ExperimentSetup, modm_mode: MonitorMode) -> dict[str, SimConfig]:
    common = {
        "profile": setup.profile,
        "n_gpus": setup.n_gpus,
        "monitor": setup.base.monitor.model_copy(update={"mode": modm_mode}),
    }
    return {
        name: SimConfig.model_validate({**setup.base.model_dump(), "system": SystemMode(name), **common})
        for name in SYSTEMS
    }


def _run(
    config: SimConfig, source: WorkloadFactory, arrival: ArrivalConfig, name: str, out_dir: Path | None, **selection
) -> tuple[SimResult, RunSummary]:
    workload, embeddings, prefill = source(arrival, name, **selection)
    result = simulate(config, workload, embeddings, prefill)
    if out_dir is not None:
        result.write(out_dir / name)
    return result, result.summary()


# ------------------------------------------------------------------------------------------------- throughput
@dataclass
class ThroughputResult:
    setup: str
    rows: dict[str, RunSummary]
    cost_s: float

    def ratio(self, system: str) -> float:
        return self.rows[system].throughput_req_per_min / self.rows["vanilla"].throughput_req_per_min


def run_throughput(
    setup: ExperimentSetup, source: WorkloadFactory, *, clients_per_gpu: int = 2, out_dir: Path | None = None
) -> ThroughputResult:
    arrival = ArrivalConfig(kind=ArrivalKind.CLOSED_LOOP, concurrency=clients_per_gpu * setup.n_gpus)
    rows, cost = {}, 0.0
    for name, config in system_configs(setup, MonitorMode.THROUGHPUT).items():
        result, summary = _run(config, source, arrival, f"{name}-{setup.label}", out_dir)
        rows[name], cost = summary, cost + result.wall_s
    return ThroughputResult(setup.label, rows, cost)


def format_throughput(results: Sequence[ThroughputResult]) -> str:
    lines = [
        f"{'setup':<9} {'system':<8} {'req/min':>8} {'x vanilla':>9} {'hit rate':>8} {'p50 s':>7}   paper",
        "-" * 78,
    ]
    for res in results:
        for name, s in res.rows.items():
            hit = "-" if s.hit_rate is None else f"{s.hit_rate:.1%}"
            lines.append(
                f"{res.setup:<9} {name:<8} {s.throughput_req_per_min:8.2f} {res.ratio(name):8.2f}x "
                f"{hit:>8} {s.latency_p50_s:7.1f}   {PAPER['throughput_ratio'][name]}"
            )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------- SLO
@dataclass
class SloResult:
    setup: str
    rates: list[float]
    points: dict[str, list[tuple[float, RunSummary]]] = field(default_factory=dict)
    cost_s: float = 0.0

    def max_compliant_rate(self, system: str, key: str, target: float) -> float | None:
        """The highest rate up to which every tested rate meets `target` attainment."""
        best = None
        for rate, summary in sorted(self.points[system]):
            if summary.slo_attainment.get(key, 0.0) < target:
                break
            best = rate
        return best


def run_slo(
    setup: ExperimentSetup,
    source: WorkloadFactory,
    rates: Sequence[float],
    *,
    n_requests: int | None = None,
    also_throughput_mode: bool = False,
    out_dir: Path | None = None,
) -> SloResult:
    """MoDM's SLO scripts run quality mode; `also_throughput_mode` adds MoDM in throughput mode as 'modm-tp'."""
    result = SloResult(setup.label, sorted(float(r) for r in rates))
    configs = system_configs(setup, MonitorMode.QUALITY)
    if also_throughput_mode:
        configs["modm-tp"] = system_configs(setup, MonitorMode.THROUGHPUT)["modm"]
    for name, config in configs.items():
        result.points[name] = []
        for rate in result.rates:
            arrival = ArrivalConfig(kind=ArrivalKind.POISSON, rate_per_min=rate)
            sim, summary = _run(
                config, source, arrival, f"{name}-{setup.label}@{rate:g}", out_dir, n_requests=n_requests
            )
            result.points[name].append((rate, summary))
            result.cost_s += sim.wall_s
    if out_dir is not None:
        plot_slo_vs_rate(result.points, out_dir / f"slo_vs_rate-{setup.label}.png")
    return result


def format_slo(results: Sequence[SloResult], target: float) -> str:
    lines = []
    for res in results:
        lines.append(
            f"SLO attainment, {res.setup} (rows: rate req/min; cells: 2x / 4x attainment, p99 s"
            f"{'; modm-tp = MoDM in throughput mode' if 'modm-tp' in res.points else ''})"
        )
        header = f"{'rate':>6} " + " ".join(f"{name:>24}" for name in res.points)
        lines += [header, "-" * len(header)]
        for i, rate in enumerate(res.rates):
            cells = []
            for name, points in res.points.items():
                s = points[i][1]
                p99 = "-" if s.latency_p99_s is None else f"{s.latency_p99_s:.0f}"
                cells.append(f"{s.slo_attainment['2x']:6.1%} / {s.slo_attainment['4x']:6.1%} {p99:>7}")
            lines.append(f"{rate:6g} " + " ".join(f"{c:>24}" for c in cells))
        for key in ("2x", "4x"):
            ours = {name: res.max_compliant_rate(name, key, target) for name in res.points}
            gpu, n = res.setup.split("x", 1)[1], int(res.setup.split("x", 1)[0])
            paper = PAPER["slo_max_rate"].get((gpu, n, key))
            ours_text = ", ".join(
                f"{k} {'<' + format(res.rates[0], 'g') if v is None else format(v, 'g')}" for k, v in ours.items()
            )
            paper_text = ", ".join(f"{k} {v}" for k, v in paper.items()) if paper else "-"
            lines.append(f"  highest rate with >= {target:.0%} within {key}: {ours_text}   (paper: {paper_text})")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ ramp
def modm_ramp_max_rate(profile: LatencyProfile, n_gpus: int) -> float:
    """MoDM's ramp ceiling (serving_system_MoDM.py): capacity at 30% misses and 70% hits costing 0.8 of a small
    generation, minus 0.05 s of gap; in req/min."""
    p_large = 1.0 / profile.full_s(ModelRole.LARGE)
    p_small = 1.0 / profile.full_s(ModelRole.SMALL)
    gpus_for_large = min(round(0.3 / (0.3 + 0.7 * 0.8 * p_large / p_small) * n_gpus), n_gpus - 1)
    time_gap = 1.0 / (p_large * gpus_for_large + p_small * (n_gpus - gpus_for_large)) - 0.05
    return 60.0 / time_gap


@dataclass
class RampResult:
    setup: str
    max_rate: float
    rows: dict[str, RunSummary]
    peak_completed: dict[str, float]  # completions per minute over the last quarter of the arrivals
    peak_offered: float
    allocation: list[tuple[float, int, int]]  # MoDM: (t, large, small) per monitor window
    cost_s: float


def run_ramp(
    setup: ExperimentSetup,
    source: WorkloadFactory,
    *,
    max_rate: float | None = None,
    n_requests: int | None = None,
    modm_mode: MonitorMode = MonitorMode.QUALITY,
    out_dir: Path | None = None,
) -> RampResult:
    """The ramp starts at 1 req/min with no warm-up requests (they would sit at the slow end of the ramp); with a
    prefilling factory the warm-up prompts warm the cache instead."""
    warm_up = None if source.default_prefill else 0
    max_rate = modm_ramp_max_rate(setup.profile, setup.n_gpus) if max_rate is None else max_rate
    arrival = ArrivalConfig(kind=ArrivalKind.RAMP, min_rate_per_min=1.0, max_rate_per_min=max_rate)
    rows, peak, allocation, cost, offered = {}, {}, [], 0.0, 0.0
    for name, config in system_configs(setup, modm_mode).items():
        sim, summary = _run(
            config, source, arrival, f"{name}-{setup.label}-ramp", out_dir, n_requests=n_requests, warm_up=warm_up
        )
        rows[name], cost = summary, cost + sim.wall_s
        arrivals = sim.arrival_s[~sim.workload.warm_up]
        t0, t1 = np.quantile(arrivals, 0.75), arrivals.max()
        done = np.sum((sim.end_s >= t0) & (sim.end_s <= t1) & ~sim.workload.warm_up)
        peak[name] = done / (t1 - t0) * 60.0
        offered = np.sum((arrivals >= t0) & (arrivals <= t1)) / (t1 - t0) * 60.0
        if name == "modm":
            allocation = [(s.t_s, s.large, s.small) for s in sim.stats]
    return RampResult(setup.label, max_rate, rows, peak, float(offered), allocation, cost)


def format_ramp(result: RampResult) -> str:
    lines = [
        f"Increasing load, {result.setup}: sigmoid ramp 1 -> {result.max_rate:.1f} req/min; last quarter of the "
        f"arrivals offers {result.peak_offered:.1f} req/min",
        f"{'system':<8} {'completed req/min (peak)':>25} {'p99 s':>8} {'hit rate':>9}   paper",
        "-" * 72,
    ]
    for name, s in result.rows.items():
        hit = "-" if s.hit_rate is None else f"{s.hit_rate:.1%}"
        lines.append(
            f"{name:<8} {result.peak_completed[name]:25.1f} {s.latency_p99_s:8.0f} {hit:>9}   "
            f"{PAPER['ramp_saturation'][name]}"
        )
    if result.allocation:
        steps = result.allocation[:: max(1, len(result.allocation) // 12)]
        lines.append(
            "MoDM allocation (t s: large/small): " + ", ".join(f"{t:.0f}: {large}/{small}" for t, large, small in steps)
        )
    return "\n".join(lines)


def write_json(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=lambda o: o.model_dump(mode="json")))
    return path
