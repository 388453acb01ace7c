"""PNG plots of runs: latency CDF, SLO attainment vs request rate, throughput and allocation over time.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot state machine), so plotting is safe from
threads and leaves no global state behind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from modm.workload.records import Outcome, RequestRecord, StatsSample
from modm.workload.report import RunSummary

__all__ = ["plot_latency_cdf", "plot_slo_vs_rate", "plot_timeline"]

_DPI = 120


def plot_latency_cdf(
    runs: Mapping[str, Sequence[RequestRecord]],
    path: str | Path,
    *,
    reference_latency_s: float | None = None,
    slo_multipliers: Sequence[float] = (2.0, 4.0),
) -> Path:
    """Empirical CDF of successful, measured latencies per run, with the SLO thresholds as vertical lines."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    plotted = 0
    for name, records in runs.items():
        latencies = np.sort([r.latency_s for r in records if r.outcome is Outcome.OK and not r.warm_up])
        if latencies.size:
            ax.step(latencies, np.arange(1, latencies.size + 1) / latencies.size, where="post", label=name)
            plotted += 1
    if reference_latency_s is not None:
        for m in slo_multipliers:
            ax.axvline(m * reference_latency_s, color="grey", linestyle="--", linewidth=0.8)
            ax.text(
                m * reference_latency_s,
                0.5,
                f"{m:g}x SLO ",
                color="grey",
                fontsize=8,
                rotation=90,
                ha="right",
                va="center",
            )
        ax.set_xlim(left=0, right=max(ax.get_xlim()[1], max(slo_multipliers) * reference_latency_s * 1.05))
    ax.set_xlabel("latency (s, arrival to image)")
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if plotted:
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no successful requests", ha="center", va="center", transform=ax.transAxes, color="grey")
    return _save(fig, path)


def plot_slo_vs_rate(sweeps: Mapping[str, Sequence[tuple[float, RunSummary]]], path: str | Path) -> Path:
    """SLO attainment (one line per system and multiplier) against the offered Poisson rate."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    styles = ["-", "--", ":", "-."]
    for system, points in sweeps.items():
        points = sorted(points, key=lambda p: p[0])
        keys = sorted({k for _, s in points for k in s.slo_attainment}, key=lambda k: float(k[:-1]))
        for style, key in zip(styles * 4, keys):
            rates = [rate for rate, s in points if key in s.slo_attainment]
            values = [s.slo_attainment[key] for _, s in points if key in s.slo_attainment]
            ax.plot(rates, values, style, marker="o", label=f"{system} ({key})")
    ax.set_xlabel("request rate (req/min, Poisson)")
    ax.set_ylabel("SLO attainment")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    if sweeps:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_timeline(
    records: Sequence[RequestRecord], stats: Sequence[StatsSample], path: str | Path, *, bin_s: float | None = None
) -> Path:
    """Offered and completed req/min per time bin, and the server's large/small allocation from /v1/stats."""
    ends = np.array([r.end_s for r in records if r.outcome is Outcome.OK and r.end_s is not None])
    arrivals = np.array([r.arrival_s for r in records if r.arrival_s is not None])
    horizon = max([*ends, *arrivals, *(s.t_s for s in stats), 1e-9])
    if bin_s is None:
        bin_s = max(horizon / 30.0, 1e-3)  # about 30 bins whatever the run length
    edges = np.arange(0.0, horizon + bin_s, bin_s)
    fig = Figure(figsize=(7.0, 5.0))
    top, bottom = fig.subplots(2, 1, sharex=True)
    for values, label in ((arrivals, "offered"), (ends, "completed")):
        counts, _ = np.histogram(values, bins=edges)
        top.step(edges[:-1], counts / bin_s * 60.0, where="post", label=label)
    top.set_ylabel("req/min")
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    sampled = [s for s in stats if s.large is not None or s.small is not None]
    if sampled:
        t = [s.t_s for s in sampled]
        bottom.step(t, [s.large or 0 for s in sampled], where="post", label="large replicas", linewidth=2.5)
        bottom.step(t, [s.small or 0 for s in sampled], where="post", label="small replicas", linestyle="--")
        bottom.yaxis.set_major_locator(MaxNLocator(integer=True))
        bottom.set_ylim(bottom=0)
        bottom.legend(fontsize=8)
    else:
        bottom.text(
            0.5,
            0.5,
            "no allocation reported by /v1/stats",
            ha="center",
            va="center",
            transform=bottom.transAxes,
            color="grey",
        )
    bottom.set_ylabel("replicas")
    bottom.set_xlabel("time since run start (s)")
    bottom.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    return path
