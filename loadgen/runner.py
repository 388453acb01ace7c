"""One run end to end: workload (trace, sessions, shard, arrivals) -> load -> summary -> files in ``out_dir``.

This is the in-process API the benchmark orchestrator calls (``run_async`` inside an event loop, ``run`` outside).
A run directory holds ``records.parquet`` (with the run metadata), ``stats.parquet``, ``summary.json``,
``summary.txt``, ``latency_cdf.png`` and ``timeline.png``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from loadgen.arrivals import arrival_offsets, shard, worker_rng
from loadgen.client import LoadResult, measure_reference_latency, send_load
from loadgen.config import ArrivalKind, RunConfig
from loadgen.plots import plot_latency_cdf, plot_timeline
from loadgen.readers import load_trace
from loadgen.records import RequestRecord, StatsSample, read_records, read_stats, write_records, write_stats
from loadgen.report import RunSummary, format_summary, summarize
from loadgen.sessions import apply_session_model
from loadgen.trace import TraceRequest

__all__ = [
    "RECORDS_FILE",
    "RunArtifacts",
    "SUMMARY_FILE",
    "StoredRun",
    "load_run",
    "prepare_workload",
    "resolve_reference_latency",
    "run",
    "run_async",
]

RECORDS_FILE = "records.parquet"
STATS_FILE = "stats.parquet"
SUMMARY_FILE = "summary.json"


@dataclass
class RunArtifacts:
    config: RunConfig
    result: LoadResult
    summary: RunSummary
    reference_latency_s: float | None
    paths: dict[str, Path] = field(default_factory=dict)


def prepare_workload(config: RunConfig) -> tuple[list[TraceRequest], np.ndarray | None]:
    """The requests this worker sends and their send offsets (None for closed loop). Pure given the files."""
    trace = load_trace(config.trace)
    if config.sessions is not None:
        # The session model shapes the whole workload, so it takes the global seed: all workers see one population
        # of users and each sends its shard of it.
        trace = apply_session_model(trace, config.sessions, seed=config.seed)
    trace = shard(trace, config.n_workers, config.worker_id)
    rng = worker_rng(config.seed, config.n_workers, config.worker_id)
    return trace, arrival_offsets(config.arrival, trace, rng, n_workers=config.n_workers)


async def resolve_reference_latency(
    config: RunConfig, trace: list[TraceRequest], *, transport: httpx.AsyncBaseTransport | None = None
) -> float | None:
    """The configured reference latency, else one measured on ``reference_url`` (same size/steps as the run)."""
    if config.reference_latency_s is not None:
        return config.reference_latency_s
    if config.reference_url is None:
        return None
    probe_config = config.client.model_copy(update={"url": config.reference_url})
    return await measure_reference_latency(trace, probe_config, config.reference_probes, transport=transport)


async def run_async(config: RunConfig, *, transport: httpx.AsyncBaseTransport | None = None) -> RunArtifacts:
    trace, offsets = prepare_workload(config)
    reference = await resolve_reference_latency(config, trace, transport=transport)
    result = await send_load(
        trace, config.client, offsets_s=offsets, concurrency=config.arrival.concurrency, transport=transport
    )
    summary = summarize(
        result.records, name=config.name, reference_latency_s=reference, stop_reason=result.stop_reason.value
    )
    artifacts = RunArtifacts(config=config, result=result, summary=summary, reference_latency_s=reference)
    if config.out_dir is not None:
        artifacts.paths = write_run(config.out_dir, artifacts)
    return artifacts


def run(config: RunConfig) -> RunArtifacts:
    """Blocking ``run_async``, for scripts and the CLI."""
    return asyncio.run(run_async(config))


def run_metadata(artifacts: RunArtifacts) -> dict[str, Any]:
    return {
        "config": artifacts.config.model_dump(mode="json"),  # SecretStr dumps masked: no API key on disk
        "reference_latency_s": artifacts.reference_latency_s,
        "stop_reason": artifacts.result.stop_reason.value,
        "started_unix_s": artifacts.result.started_unix_s,
        "duration_s": artifacts.result.duration_s,
        "stats_poll_failures": artifacts.result.stats_poll_failures,
    }


def write_run(out_dir: Path, artifacts: RunArtifacts) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dir = out_dir.resolve()
    for record in artifacts.result.records:  # kept images move with their run directory
        if record.path is not None and Path(record.path).resolve().is_relative_to(run_dir):
            record.path = str(Path(record.path).resolve().relative_to(run_dir))
    paths = {
        "records": write_records(out_dir / RECORDS_FILE, artifacts.result.records, run_metadata(artifacts)),
        "stats": write_stats(out_dir / STATS_FILE, artifacts.result.stats),
    }
    summary_path = out_dir / SUMMARY_FILE
    summary_path.write_text(json.dumps(artifacts.summary.model_dump(mode="json"), indent=2))
    (out_dir / "summary.txt").write_text(format_summary(artifacts.summary) + "\n")
    paths["summary"] = summary_path
    paths["latency_cdf"] = plot_latency_cdf(
        {artifacts.config.name: artifacts.result.records},
        out_dir / "latency_cdf.png",
        reference_latency_s=artifacts.reference_latency_s,
    )
    paths["timeline"] = plot_timeline(artifacts.result.records, artifacts.result.stats, out_dir / "timeline.png")
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
