"""Summarise one run's records: throughput, SLO attainment, latency percentiles, hit rate, k-mix, errors.

Definitions (the same for every system, so ratios are fair):

- Warm-up requests are excluded from everything below.
- makespan = last successful completion - first arrival; throughput = successful requests / makespan, in req/min
  (MoDM's ``num_req / completion time of the last request``).
- SLO attainment at m x = share of *all* measured requests that succeeded within m x the reference latency (the
  standalone large-model latency). A failed, timed-out, cancelled or never-sent request is a violation.
- Latency percentiles (linear interpolation) are over successful requests; latency = end - arrival, queueing
  included.
- hit rate = hits / successful requests that reported hit; k-mix counts successful requests per k, misses as "miss".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from modm.workload.constants import SLO_MULTIPLIERS
from modm.workload.records import Outcome, RequestRecord

__all__ = ["RunSummary", "format_summary", "slo_key", "summarize"]

_TOP_ERRORS = 5


def slo_key(multiplier: float) -> str:
    return f"{multiplier:g}x"


class RunSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Run name.")
    n_requests: int = Field(description="Measured requests in the workload (warm-up excluded).")
    n_ok: int = Field(description="Measured requests that returned an image.")
    outcomes: dict[str, int] = Field(description="Measured requests per outcome.")
    makespan_s: float | None = Field(description="First arrival to last successful completion, seconds.")
    throughput_req_per_min: float | None = Field(description="Successful requests per minute of makespan.")
    offered_rate_req_per_min: float | None = Field(description="Arrivals per minute over the arrival span.")
    latency_mean_s: float | None = Field(description="Mean latency of successful requests.")
    latency_p50_s: float | None = Field(description="Median latency of successful requests.")
    latency_p95_s: float | None = Field(description="95th percentile latency of successful requests.")
    latency_p99_s: float | None = Field(description="99th percentile latency of successful requests.")
    reference_latency_s: float | None = Field(description="Standalone large-model latency the SLOs scale.")
    slo_attainment: dict[str, float] = Field(description="Share of requests within m x reference, keyed '2x'...")
    hit_rate: float | None = Field(description="Hits / successful requests that reported hit or miss.")
    k_mix: dict[str, int] = Field(description="Successful requests per k ('miss' for misses).")
    model_mix: dict[str, int] = Field(description="Successful requests per serving model.")
    top_errors: list[str] = Field(description="Most frequent error messages, with counts.")
    stop_reason: str | None = Field(None, description="Why the run ended (completed, time-limit, ...).")


def summarize(
    records: Sequence[RequestRecord],
    *,
    name: str = "run",
    reference_latency_s: float | None = None,
    slo_multipliers: Sequence[float] = SLO_MULTIPLIERS,
    stop_reason: str | None = None,
) -> RunSummary:
    if reference_latency_s is not None and not reference_latency_s > 0:
        raise ValueError(f"reference latency must be positive seconds, got {reference_latency_s}")
    measured = [r for r in records if not r.warm_up]
    ok = [r for r in measured if r.outcome is Outcome.OK]
    latencies = np.array([r.latency_s for r in ok], dtype=np.float64)
    arrivals = sorted(r.arrival_s for r in measured if r.arrival_s is not None)

    makespan = throughput = None
    if ok and arrivals:
        makespan = max(r.end_s for r in ok) - arrivals[0]
        throughput = len(ok) / makespan * 60.0 if makespan > 0 else None
    offered = None
    if len(arrivals) > 1 and arrivals[-1] > arrivals[0]:
        offered = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) * 60.0

    slo = {}
    if reference_latency_s is not None and measured:
        for m in slo_multipliers:
            within = int(np.sum(latencies <= m * reference_latency_s))
            slo[slo_key(m)] = within / len(measured)

    reported = [r for r in ok if r.hit is not None]
    hit_rate = sum(r.hit for r in reported) / len(reported) if reported else None
    k_mix = Counter("miss" if not r.hit else "hit" if r.k is None else str(r.k) for r in reported)
    errors = Counter(r.error for r in measured if r.outcome is not Outcome.OK and r.error)

    def pct(q: float) -> float | None:
        return float(np.percentile(latencies, q)) if latencies.size else None

    return RunSummary(
        name=name,
        n_requests=len(measured),
        n_ok=len(ok),
        outcomes=dict(sorted(Counter(r.outcome.value for r in measured).items())),
        makespan_s=makespan,
        throughput_req_per_min=throughput,
        offered_rate_req_per_min=offered,
        latency_mean_s=float(latencies.mean()) if latencies.size else None,
        latency_p50_s=pct(50),
        latency_p95_s=pct(95),
        latency_p99_s=pct(99),
        reference_latency_s=reference_latency_s,
        slo_attainment=slo,
        hit_rate=hit_rate,
        k_mix=dict(sorted(k_mix.items(), key=lambda kv: _k_order(kv[0]))),
        model_mix=dict(sorted(Counter(r.model for r in ok if r.model is not None).items())),
        top_errors=[f"{count}x {message}" for message, count in errors.most_common(_TOP_ERRORS)],
        stop_reason=stop_reason,
    )


def _k_order(key: str) -> tuple[int, int]:
    return (1, 0) if key == "miss" else (0, int(key)) if key.lstrip("-").isdigit() else (2, 0)


def format_summary(summary: RunSummary) -> str:
    def num(value: float | None, fmt: str = ".2f") -> str:
        return "-" if value is None else format(value, fmt)

    lines = [
        f"run {summary.name}: {summary.n_ok}/{summary.n_requests} ok"
        + (f" (stopped: {summary.stop_reason})" if summary.stop_reason not in (None, "completed") else ""),
        f"  throughput      {num(summary.throughput_req_per_min)} req/min over {num(summary.makespan_s, '.1f')} s"
        f" (offered {num(summary.offered_rate_req_per_min)} req/min)",
        f"  latency (s)     mean {num(summary.latency_mean_s)}  p50 {num(summary.latency_p50_s)}"
        f"  p95 {num(summary.latency_p95_s)}  p99 {num(summary.latency_p99_s)}",
    ]
    if summary.slo_attainment:
        slo = "  ".join(f"{k} {v:.1%}" for k, v in summary.slo_attainment.items())
        lines.append(f"  SLO attainment  {slo} (reference {num(summary.reference_latency_s, '.3f')} s)")
    lines.append(
        f"  hit rate        {'-' if summary.hit_rate is None else f'{summary.hit_rate:.1%}'}"
        f"  k-mix {summary.k_mix or '-'}  models {summary.model_mix or '-'}"
    )
    lines.append(f"  outcomes        {summary.outcomes}")
    lines.extend(f"  error           {e}" for e in summary.top_errors)
    return "\n".join(lines)
