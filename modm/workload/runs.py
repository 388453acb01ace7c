"""A run directory, measured (loadgen) or simulated (modm sim): its files, written and read back.

A run directory holds ``records.parquet`` (with the run metadata), ``stats.parquet``, ``summary.json``,
``summary.txt``, ``latency_cdf.png`` and ``timeline.png``; `modm-loadgen report` and `compare` read either kind.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modm.workload.config import ArrivalKind
from modm.workload.plots import plot_latency_cdf, plot_timeline
from modm.workload.records import RequestRecord, StatsSample, read_records, read_stats, write_records, write_stats
from modm.workload.report import RunSummary, format_summary, summarize

__all__ = ["RECORDS_FILE", "STATS_FILE", "SUMMARY_FILE", "StoredRun", "load_run", "write_run_files"]

RECORDS_FILE = "records.parquet"
STATS_FILE = "stats.parquet"
SUMMARY_FILE = "summary.json"


def write_run_files(
    out_dir: str | Path,
    name: str,
    records: Sequence[RequestRecord],
    stats: Sequence[StatsSample],
    metadata: dict[str, Any],
    summary: RunSummary,
    reference_latency_s: float | None,
    *,
    plots: bool = True,
) -> dict[str, Path]:
    """Write a run directory; returns the path of each file by kind."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "records": write_records(out_dir / RECORDS_FILE, list(records), metadata),
        "stats": write_stats(out_dir / STATS_FILE, list(stats)),
        "summary": out_dir / SUMMARY_FILE,
    }
    paths["summary"].write_text(json.dumps(summary.model_dump(mode="json"), indent=2))
    (out_dir / "summary.txt").write_text(format_summary(summary) + "\n")
    if plots:
        paths["latency_cdf"] = plot_latency_cdf(
            {name: list(records)}, out_dir / "latency_cdf.png", reference_latency_s=reference_latency_s
        )
        paths["timeline"] = plot_timeline(list(records), list(stats), out_dir / "timeline.png")
    return paths


@dataclass
class StoredRun:
    """A run read back from its directory."""

    path: Path
    records: list[RequestRecord]
    stats: list[StatsSample]
    metadata: dict[str, Any]

    @property
    def name(self) -> str:
        return self.metadata.get("config", {}).get("name") or self.path.name

    @property
    def poisson_rate_per_min(self) -> float | None:
        arrival = self.metadata.get("config", {}).get("arrival", {})
        return arrival.get("rate_per_min") if arrival.get("kind") == ArrivalKind.POISSON.value else None

    def summarize(self, reference_latency_s: float | None = None) -> RunSummary:
        """Recompute the summary; ``reference_latency_s`` overrides the one stored with the run."""
        reference = reference_latency_s if reference_latency_s is not None else self.metadata.get("reference_latency_s")
        return summarize(
            self.records, name=self.name, reference_latency_s=reference, stop_reason=self.metadata.get("stop_reason")
        )


def load_run(run_dir: str | Path) -> StoredRun:
    """Read a run directory (or a records.parquet file directly)."""
    path = Path(run_dir)
    records_path = path if path.suffix == ".parquet" else path / RECORDS_FILE
    records, metadata = read_records(records_path)
    return StoredRun(
        path=records_path.parent, records=records, stats=read_stats(records_path.parent / STATS_FILE), metadata=metadata
    )
