"""MoDM's increasing-load experiment (Fig. 10, 16 x MI210) with two small-model tiers, SDXL then SANA-1.6B.

The paper switches the small model by hand (SDXL up to about 22 req/min, SANA above) and reports Vanilla saturating
near 10 req/min and MoDM tracking the load to about 26. Here the tier policy (modm.policy.tiers) makes the switch,
and the switch point is predicted from the same policy before the run: `budget_share` is linear in R, so the
highest rate a tier carries within the headroom is headroom / share(R = 1).

Systems, on one workload (the same requests and offsets): Vanilla, MoDM with SDXL only, MoDM with SDXL then SANA.
Hits are parametric (MoDM's harness assumes H = 0.7 and an average hit cost of 0.7-0.8), so the prediction's inputs
are the run's. Cost per image is GPU-seconds per served image, busy and provisioned (SimResult.gpu_seconds_per_image).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modm.config.schema import MonitorMode, SystemMode
from modm.policy.monitor import WindowStats
from modm.policy.tiers import budget_share
from modm.sim.config import SimConfig
from modm.sim.profiles import LatencyProfile
from modm.sim.results import SimResult
from modm.sim.simulator import simulate
from modm.sim.workload import WorkloadFactory
from modm.workload.config import ArrivalConfig, ArrivalKind

__all__ = ["TierRampResult", "format_tier_ramp", "predict_tier_switch", "run_tier_ramp"]

PAPER_FIG10 = {"vanilla_saturation": "~10 req/min", "modm_tracks_to": "~26 req/min", "switch": "~22 req/min"}


def predict_tier_switch(config: SimConfig) -> dict:
    """From the tier policy's budget share at R = 1: the highest rate each tier carries within the headroom, the
    rate of the move to the cheaper tier and of the move back, and Vanilla's saturation (N x P_large)."""
    if config.parametric is None:
        raise ValueError("the prediction needs the parametric hit model (its H and P(k) are the inputs)")
    profile, n, monitor = config.profile, config.n_gpus, config.monitor
    unit = WindowStats(1.0, config.parametric.hit_rate, config.parametric.k_mix, config.policy.total_steps)
    large_per_min = profile.throughput().large_per_min
    share_per_rate = {
        tier: budget_share(unit, large_per_min, per_min, n) for tier, per_min in profile.tier_per_min().items()
    }
    first = profile.tier_names()[0]
    return {
        "share_per_req_per_min": share_per_rate,
        "carries_up_to_req_per_min": {t: monitor.headroom / s for t, s in share_per_rate.items()},
        "switch_to_cheaper_above_req_per_min": monitor.headroom / share_per_rate[first],
        "switch_back_below_req_per_min": (monitor.headroom - monitor.tier_hysteresis) / share_per_rate[first],
        "vanilla_saturation_req_per_min": n * large_per_min,
    }


@dataclass
class TierRampResult:
    max_rate: float
    prediction: dict
    systems: dict[str, dict]  # name -> peak completed, p99, hit rate, served per model, GPU-seconds per image
    tier_timeline: list[dict]  # the tiered system's monitor windows: t, R, tier, large, small, shares
    first_switch: dict | None  # the window where the tier first changed
    wall_s: float

    def as_dict(self) -> dict:
        return {
            "max_rate_per_min": self.max_rate,
            "prediction": self.prediction,
            "systems": self.systems,
            "tier_timeline": self.tier_timeline,
            "first_switch": self.first_switch,
            "paper_fig10": PAPER_FIG10,
            "wall_s": self.wall_s,
        }


def _single_tier(profile: LatencyProfile) -> LatencyProfile:
    return profile.model_copy(update={"small_tiers": {}})


def run_tier_ramp(
    base: SimConfig,
    source: WorkloadFactory,
    *,
    max_rate: float,
    n_requests: int,
    mode: MonitorMode = MonitorMode.QUALITY,
    out_dir: Path | None = None,
    on_prediction: Callable[[dict], None] | None = None,
) -> TierRampResult:
    """`base`: the tiered profile, n_gpus and parametric hits; run as Vanilla, MoDM on the first tier only, and
    MoDM with every tier."""
    if len(base.profile.tier_names()) < 2:
        raise ValueError(f"profile {base.profile.gpu!r} has one small model; the tier ramp needs small_tiers")
    monitor = base.monitor.model_copy(update={"mode": mode})
    configs = {
        "vanilla": base.model_copy(update={"system": SystemMode.VANILLA, "monitor": monitor}),
        "modm-sdxl": base.model_copy(update={"profile": _single_tier(base.profile), "monitor": monitor}),
        "modm-tiers": base.model_copy(update={"monitor": monitor}),
    }
    prediction = predict_tier_switch(configs["modm-tiers"])
    if on_prediction is not None:  # shown before any system runs
        on_prediction(prediction)
    arrival = ArrivalConfig(kind=ArrivalKind.RAMP, min_rate_per_min=1.0, max_rate_per_min=max_rate)
    systems, timeline, wall = {}, [], 0.0
    for name, config in configs.items():
        workload, embeddings, prefill = source(arrival, f"{name}-tier-ramp", n_requests=n_requests, warm_up=0)
        result = simulate(SimConfig.model_validate(config.model_dump()), workload, embeddings, prefill)
        wall += result.wall_s
        if out_dir is not None:
            result.write(out_dir / name)
        systems[name] = _system_row(result)
        if name == "modm-tiers":
            timeline = [
                {
                    "t_s": d.t_s,
                    "request_rate": d.request_rate,
                    "hit_rate": d.hit_rate,
                    "tier": d.tier,
                    "large": d.large,
                    "small": d.small,
                    "shares": d.tier_shares,
                }
                for d in result.monitor_decisions
            ]
    first = next((w for prev, w in zip(timeline, timeline[1:]) if w["tier"] != prev["tier"]), None)
    if timeline and first is None and timeline[0]["tier"] != base.profile.tier_names()[0]:
        first = timeline[0]
    return TierRampResult(max_rate, prediction, systems, timeline, first, wall)


def _system_row(result: SimResult) -> dict:
    arrivals = result.arrival_s
    t0, t1 = float(np.quantile(arrivals, 0.75)), float(arrivals.max())
    done = int(np.sum((result.end_s >= t0) & (result.end_s <= t1)))
    offered = int(np.sum((arrivals >= t0) & (arrivals <= t1)))
    summary = result.summary()
    return {
        "peak_offered_req_per_min": offered / (t1 - t0) * 60.0,
        "peak_completed_req_per_min": done / (t1 - t0) * 60.0,
        "latency_p99_s": summary.latency_p99_s,
        "hit_rate": summary.hit_rate,
        "served_per_model": result.served_per_model(),
        "gpu_seconds_per_image": result.gpu_seconds_per_image(),
        "model_switches": len(result.switches),
    }


def format_prediction(prediction: dict) -> str:
    carries = ", ".join(f"{t} {r:.1f}" for t, r in prediction["carries_up_to_req_per_min"].items())
    return (
        f"prediction (tier policy, before the run): tiers carry up to {carries} req/min within the headroom; "
        f"switch to the cheaper tier above {prediction['switch_to_cheaper_above_req_per_min']:.1f} req/min, back "
        f"below {prediction['switch_back_below_req_per_min']:.1f}; Vanilla saturates at "
        f"{prediction['vanilla_saturation_req_per_min']:.1f} req/min"
    )


def format_tier_ramp(result: TierRampResult) -> str:
    lines = [
        f"Increasing load, 1 -> {result.max_rate:g} req/min (MoDM Fig. 10; paper: Vanilla "
        f"{PAPER_FIG10['vanilla_saturation']}, MoDM tracks to {PAPER_FIG10['modm_tracks_to']}, switch "
        f"{PAPER_FIG10['switch']})",
        f"{'system':<11} {'offered':>8} {'completed':>9} {'p99 s':>7} {'hit':>6} {'busy GPU-s/img':>15} "
        f"{'prov. GPU-s/img':>16}  served per model",
        "-" * 100,
    ]
    for name, row in result.systems.items():
        cost = row["gpu_seconds_per_image"]
        hit = "-" if row["hit_rate"] is None else f"{row['hit_rate']:.0%}"
        p99 = "-" if row["latency_p99_s"] is None else f"{row['latency_p99_s']:.0f}"
        lines.append(
            f"{name:<11} {row['peak_offered_req_per_min']:8.1f} {row['peak_completed_req_per_min']:9.1f} {p99:>7} "
            f"{hit:>6} {cost['busy_per_image']:15.1f} {cost['provisioned_per_image']:16.1f}  "
            f"{row['served_per_model']}"
        )
    switch = result.first_switch
    lines.append(
        "first tier switch: none"
        if switch is None
        else f"first tier switch: at t={switch['t_s']:.0f} s, window R={switch['request_rate']:.1f} req/min, "
        f"H={switch['hit_rate']:.2f} -> {switch['tier']} (predicted above "
        f"{result.prediction['switch_to_cheaper_above_req_per_min']:.1f} at H=0.7; the window's own H and P(k) decide)"
    )
    steps = result.tier_timeline[:: max(1, len(result.tier_timeline) // 12)]
    lines.append(
        "tier timeline (t s: R, tier, large/small): "
        + ", ".join(f"{w['t_s']:.0f}: {w['request_rate']:.1f} {w['tier']} {w['large']}/{w['small']}" for w in steps)
    )
    return "\n".join(lines)
