"""The index tier's capacity plan: how many CacheIndex reader replicas a cluster of N GPUs needs at MoDM's rates.

For each latency profile, cluster size and reader count, the simulator runs MoDM (parametric hits) at a fraction
of the GPUs' saturation rate (`saturation_rate_per_s`: the most requests the GPUs can serve), starting from the
large/small split the monitor settles at (`steady_large_gpus`), with the index tier modelled
(modm/sim/index_tier.py), and reports the tier's utilisation and the lookups' queueing; `replicas_needed` gives the
arithmetic answer beside it. A `speedup` divides the profile's generation times: what the index tier faces when
models get that much faster per GPU (distilled or few-step models, newer GPUs): a what-if, not a measurement.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from modm.roles import ModelRole
from modm.sim.config import ParametricHitConfig, SimConfig
from modm.sim.index_tier import IndexTierConfig, replicas_needed, saturation_rate_per_s, steady_large_gpus
from modm.sim.profiles import LatencyProfile
from modm.sim.simulator import simulate
from modm.sim.workload import synthetic_workload
from modm.workload.config import ArrivalConfig, ArrivalKind

__all__ = ["IndexPlanRow", "format_index_plan", "plan_index_tier", "rows_as_dicts", "scaled_profile"]


@dataclass(frozen=True)
class IndexPlanRow:
    profile: str
    speedup: float
    gpus: int
    offered_req_per_s: float
    readers: int
    lookup_ms: float
    lookups_per_s: float  # lookups and admissions over the span of the arrivals: the offered rates
    reader_utilisation: float
    lookup_wait_p99_ms: float
    admissions_per_s: float
    writer_utilisation: float
    admission_lag_p99_ms: float
    replicas_needed: int  # replicas_needed(offered rate, lookup_s, max_utilisation)
    served_req_per_min: float


def scaled_profile(profile: LatencyProfile, speedup: float) -> LatencyProfile:
    """`profile` with every generation `speedup` times faster (load times unchanged)."""
    if speedup <= 0:
        raise ValueError(f"speedup must be positive, got {speedup}")
    if speedup == 1:
        return profile
    return profile.model_copy(
        update={
            "gpu": f"{profile.gpu} x{speedup:g}",
            "full_generation_s": {role: s / speedup for role, s in profile.full_generation_s.items()},
            "fixed_s": {role: s / speedup for role, s in profile.fixed_s.items()},
            "source": f"{profile.source} (generation times divided by {speedup:g}: a what-if)".strip(),
        }
    )


def plan_index_tier(
    base: SimConfig,
    profiles: dict[str, LatencyProfile],
    gpus_list: list[int],
    readers_list: list[int],
    speedups: list[float],
    tier: IndexTierConfig,
    *,
    n_requests: int,
    load_fraction: float,
    max_utilisation: float,
) -> list[IndexPlanRow]:
    if not 0 < load_fraction <= 1:
        raise ValueError(f"load_fraction must be in (0, 1], got {load_fraction}")
    hits = base.parametric or ParametricHitConfig()
    rows = []
    for name, base_profile in profiles.items():
        for speedup in speedups:
            profile = scaled_profile(base_profile, speedup)
            if not profile.has(ModelRole.SMALL):
                raise ValueError(f"profile {name!r} has no small-model latency")
            for gpus in gpus_list:
                shape = (profile, gpus, hits.hit_rate, hits.k_mix, base.policy.total_steps)
                rate = load_fraction * saturation_rate_per_s(*shape)
                arrival = ArrivalConfig(kind=ArrivalKind.POISSON, rate_per_min=rate * 60.0)
                workload = synthetic_workload(n_requests, arrival, seed=base.seed, name=f"index-plan-{gpus}")
                for readers in readers_list:
                    config = SimConfig.model_validate(
                        {
                            **base.model_dump(),
                            "n_gpus": gpus,
                            "profile": profile.model_dump(),
                            "parametric": hits.model_dump(),
                            "index_tier": tier.model_copy(update={"readers": readers}).model_dump(),
                            "monitor_initial_large": steady_large_gpus(*shape),
                        }
                    )
                    result = simulate(config, workload)
                    report = result.index_tier
                    arrivals_s = float(result.arrival_s.max() - result.arrival_s.min())
                    rows.append(
                        IndexPlanRow(
                            profile=name,
                            speedup=speedup,
                            gpus=gpus,
                            offered_req_per_s=rate,
                            readers=readers,
                            lookup_ms=tier.lookup_s * 1000.0,
                            lookups_per_s=report.lookups / arrivals_s,
                            reader_utilisation=report.reader_utilisation,
                            lookup_wait_p99_ms=report.lookup_wait_p99_ms,
                            admissions_per_s=report.admissions / arrivals_s,
                            writer_utilisation=report.writer_utilisation,
                            admission_lag_p99_ms=report.admission_lag_p99_ms,
                            replicas_needed=replicas_needed(rate, tier.lookup_s, max_utilisation),
                            served_req_per_min=result.fast_metrics().throughput_req_per_min,
                        )
                    )
    return rows


def format_index_plan(rows: list[IndexPlanRow], tier: IndexTierConfig, max_utilisation: float) -> str:
    lines = [
        f"Index tier: lookup {tier.lookup_s * 1e3:.2f} ms per reader replica, admission "
        f"{tier.admission_s * 1e3:.2f} ms + {tier.commit_s * 1e3:.2f} ms per group commit (one writer); "
        f"replicas needed = max(2, ceil(rate x lookup / {max_utilisation:g}))",
        f"{'profile':<12} {'GPUs':>5} {'req/s':>8} {'readers':>7} {'reader util':>11} {'wait p99 ms':>11} "
        f"{'adm/s':>8} {'writer util':>11} {'adm lag p99 ms':>14} {'needed':>6}",
    ]
    for r in rows:
        label = r.profile if r.speedup == 1 else f"{r.profile} x{r.speedup:g}"
        lines.append(
            f"{label:<12} {r.gpus:5d} {r.offered_req_per_s:8.1f} {r.readers:7d} {r.reader_utilisation:11.1%} "
            f"{r.lookup_wait_p99_ms:11.2f} {r.admissions_per_s:8.1f} {r.writer_utilisation:11.1%} "
            f"{r.admission_lag_p99_ms:14.1f} {r.replicas_needed:6d}"
        )
    return "\n".join(lines)


def rows_as_dicts(rows: list[IndexPlanRow]) -> list[dict]:
    return [asdict(r) for r in rows]
