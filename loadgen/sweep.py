"""SLO sweep: the same workload at several Poisson rates against one server, and the SLO-attainment-vs-rate plot."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from loadgen.config import RunConfig
from loadgen.runner import resolve_reference_latency, run_async
from modm.workload.config import ArrivalConfig, ArrivalKind
from modm.workload.plots import plot_slo_vs_rate
from modm.workload.prepare import prepare_workload
from modm.workload.report import RunSummary

__all__ = ["SweepResult", "run_sweep", "sweep_async"]


@dataclass
class SweepResult:
    name: str
    reference_latency_s: float | None
    points: list[tuple[float, RunSummary]]  # (rate req/min, summary), in increasing rate
    plot_path: Path | None = None


async def sweep_async(
    base: RunConfig,
    rates_per_min: Sequence[float],
    *,
    isolate_tenants: bool = True,
    transport: httpx.AsyncBaseTransport | None = None,
) -> SweepResult:
    """Run ``base`` once per rate (Poisson arrivals). The reference latency is resolved once and shared, so every
    point is judged against the same SLO. Each point goes to ``out_dir/rate_<r>``; the plot to ``out_dir``.

    The server keeps its cache between points, so a later point would replay prompts the cache already holds. With
    ``isolate_tenants`` each point sends its own tenant id (``<tenant or name>@<rate>``); the server scopes its cache
    per tenant, so every point starts cold, as MoDM's per-rate runs do. Turn it off for a server without tenants.
    """
    rates = sorted(float(r) for r in rates_per_min)
    if not rates or rates[0] <= 0:
        raise ValueError(f"sweep rates must be positive req/min, got {list(rates_per_min)}")
    trace, _ = prepare_workload(base)
    reference = await resolve_reference_latency(base, trace, transport=transport)
    points = []
    for rate in rates:
        config = base.model_copy(
            update={
                "name": f"{base.name}@{rate:g}",
                "arrival": ArrivalConfig(kind=ArrivalKind.POISSON, rate_per_min=rate),
                "client": base.client.model_copy(update={"tenant": f"{base.client.tenant or base.name}@{rate:g}"})
                if isolate_tenants
                else base.client,
                "reference_latency_s": reference,
                "out_dir": None if base.out_dir is None else Path(base.out_dir) / f"rate_{rate:g}",
            }
        )
        artifacts = await run_async(config, transport=transport)
        points.append((rate, artifacts.summary))
    result = SweepResult(name=base.name, reference_latency_s=reference, points=points)
    if base.out_dir is not None:
        out_dir = Path(base.out_dir)
        result.plot_path = plot_slo_vs_rate({base.name: points}, out_dir / "slo_vs_rate.png")
        (out_dir / "sweep.json").write_text(
            json.dumps(
                {
                    "name": base.name,
                    "reference_latency_s": reference,
                    "points": [{"rate_per_min": r, "summary": s.model_dump(mode="json")} for r, s in points],
                },
                indent=2,
            )
        )
    return result


def run_sweep(base: RunConfig, rates_per_min: Sequence[float], *, isolate_tenants: bool = True) -> SweepResult:
    return asyncio.run(sweep_async(base, rates_per_min, isolate_tenants=isolate_tenants))
