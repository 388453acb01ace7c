"""One run end to end: workload (trace, sessions, shard, arrivals) -> load -> summary -> files in ``out_dir``.

This is the in-process API the benchmark orchestrator calls (``run_async`` inside an event loop, ``run`` outside).
The run directory's layout is modm.workload.runs'.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from loadgen.client import LoadResult, measure_reference_latency, send_load
from loadgen.config import RunConfig
from modm.workload.prepare import prepare_workload
from modm.workload.report import RunSummary, summarize
from modm.workload.runs import write_run_files
from modm.workload.trace import TraceRequest

__all__ = ["RunArtifacts", "resolve_reference_latency", "run", "run_async", "write_run"]


@dataclass
class RunArtifacts:
    config: RunConfig
    result: LoadResult
    summary: RunSummary
    reference_latency_s: float | None
    paths: dict[str, Path] = field(default_factory=dict)


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
    run_dir = out_dir.resolve()
    for record in artifacts.result.records:  # kept images move with their run directory
        if record.path is not None and Path(record.path).resolve().is_relative_to(run_dir):
            record.path = str(Path(record.path).resolve().relative_to(run_dir))
    return write_run_files(
        out_dir,
        artifacts.config.name,
        artifacts.result.records,
        artifacts.result.stats,
        run_metadata(artifacts),
        artifacts.summary,
        artifacts.reference_latency_s,
    )
