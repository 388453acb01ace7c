"""Compare runs side by side: one row per run, with ratios against a named baseline run (e.g. vanilla)."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from modm.workload.report import RunSummary

__all__ = ["Comparison", "ComparisonRow", "compare_runs", "format_comparison"]


class ComparisonRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Run name.")
    throughput_req_per_min: float | None = Field(description="Successful requests per minute.")
    throughput_ratio: float | None = Field(description="Throughput / the baseline's throughput.")
    latency_p50_s: float | None = Field(description="Median latency.")
    latency_p99_s: float | None = Field(description="99th percentile latency.")
    p99_ratio: float | None = Field(description="p99 latency / the baseline's p99 (lower is better).")
    slo_attainment: dict[str, float] = Field(description="SLO attainment per multiplier.")
    slo_ratio: dict[str, float | None] = Field(description="SLO attainment / the baseline's, per multiplier.")
    hit_rate: float | None = Field(description="Cache hit rate.")
    k_mix: dict[str, int] = Field(description="Requests per k.")
    n_ok: int = Field(description="Successful requests.")
    n_requests: int = Field(description="Measured requests.")


class Comparison(BaseModel):
    model_config = ConfigDict(extra="forbid")

    baseline: str = Field(description="The run every ratio is relative to.")
    rows: list[ComparisonRow] = Field(description="One row per run, in the order given.")


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return value / base


def compare_runs(summaries: Sequence[RunSummary], baseline: str) -> Comparison:
    names = [s.name for s in summaries]
    if len(set(names)) != len(names):
        raise ValueError(f"run names must be unique to compare them, got {names}")
    by_name = {s.name: s for s in summaries}
    if baseline not in by_name:
        raise ValueError(f"baseline {baseline!r} is not among the runs {names}")
    base = by_name[baseline]
    rows = [
        ComparisonRow(
            name=s.name,
            throughput_req_per_min=s.throughput_req_per_min,
            throughput_ratio=_ratio(s.throughput_req_per_min, base.throughput_req_per_min),
            latency_p50_s=s.latency_p50_s,
            latency_p99_s=s.latency_p99_s,
            p99_ratio=_ratio(s.latency_p99_s, base.latency_p99_s),
            slo_attainment=s.slo_attainment,
            slo_ratio={k: _ratio(v, base.slo_attainment.get(k)) for k, v in s.slo_attainment.items()},
            hit_rate=s.hit_rate,
            k_mix=s.k_mix,
            n_ok=s.n_ok,
            n_requests=s.n_requests,
        )
        for s in summaries
    ]
    return Comparison(baseline=baseline, rows=rows)


def format_comparison(comparison: Comparison) -> str:
    """A fixed-width text table; ratios are relative to the baseline row."""
    slo_keys = sorted({k for row in comparison.rows for k in row.slo_attainment}, key=lambda k: float(k[:-1]))
    header = [
        "run",
        "ok/n",
        "req/min",
        "x base",
        "p50 s",
        "p99 s",
        *(f"SLO {k}" for k in slo_keys),
        "hit rate",
        "k-mix",
    ]

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    body = []
    for row in comparison.rows:
        body.append(
            [
                row.name + (" (base)" if row.name == comparison.baseline else ""),
                f"{row.n_ok}/{row.n_requests}",
                num(row.throughput_req_per_min, ".2f"),
                num(row.throughput_ratio, ".2f"),
                num(row.latency_p50_s, ".2f"),
                num(row.latency_p99_s, ".2f"),
                *(num(row.slo_attainment.get(k), ".1%") for k in slo_keys),
                num(row.hit_rate, ".1%"),
                " ".join(f"{k}:{v}" for k, v in row.k_mix.items()) or "-",
            ]
        )
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *body)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
