"""The load generator's configuration: the workload (modm.workload.config) plus where and how it is sent.

One pydantic schema, documented field by field, unknown keys rejected; constructing a config never touches files or
the network.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from loadgen.constants import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_MAX_CONSECUTIVE_FAILURES,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_REFERENCE_PROBES,
    DEFAULT_REQUEST_TIMEOUT_S,
    DEFAULT_STATS_POLL_PERIOD_S,
)
from modm.workload.config import Strict, WorkloadConfig

__all__ = ["ClientConfig", "RunConfig"]


class ClientConfig(Strict):
    url: str = Field(description="Base URL of the server, e.g. http://127.0.0.1:8000.")
    size: str = Field(DEFAULT_IMAGE_SIZE, pattern=r"^[1-9][0-9]*x[1-9][0-9]*$", description="Image size WxH.")
    steps: int | None = Field(None, gt=0, description="Steps to request; None = the server's default.")
    forward_trace_seed: bool = Field(False, description="Send the trace's seed column (DiffusionDB) as `seed`.")
    forward_trace_steps: bool = Field(False, description="Send the trace's step column (overrides `steps`).")
    seed_from_row: bool = Field(
        False,
        description="Send the request's trace row as `seed` when no trace seed is sent: a distinct seed per "
        "prompt, the same in every run (fair image comparisons across systems).",
    )
    tenant: str | None = Field(None, description="X-Tenant-Id header; None sends no header.")
    api_key: SecretStr | None = Field(None, description="Bearer key for the Authorization header.")
    request_timeout_s: float = Field(DEFAULT_REQUEST_TIMEOUT_S, gt=0, description="Per-request time limit.")
    connect_timeout_s: float = Field(DEFAULT_CONNECT_TIMEOUT_S, gt=0, description="TCP connect time limit.")
    max_in_flight: int = Field(DEFAULT_MAX_IN_FLIGHT, ge=1, description="Outstanding requests at most.")
    max_duration_s: float | None = Field(
        None, gt=0, description="Hard limit on the whole run; unfinished requests are recorded as cancelled."
    )
    max_consecutive_failures: int = Field(
        DEFAULT_MAX_CONSECUTIVE_FAILURES,
        ge=1,
        description="Timeouts/connection errors in a row after which the server is presumed dead and sending stops.",
    )
    stats_poll_period_s: float | None = Field(
        DEFAULT_STATS_POLL_PERIOD_S, gt=0, description="Poll GET /v1/stats this often; None disables polling."
    )
    progress: bool = Field(True, description="Show a tqdm progress bar.")
    image_dir: Path | None = Field(
        None,
        description="Keep each answered request's first image here as <index>.png (the records' `path` "
        "column, for quality metrics); None keeps no images.",
    )


class RunConfig(WorkloadConfig):
    """A workload sent to a server: where and how, and the SLO reference."""

    client: ClientConfig = Field(description="Where and how requests are sent.")
    reference_latency_s: float | None = Field(
        None, gt=0, description="Standalone large-model latency for the SLOs; None = measure it (reference_url)."
    )
    reference_url: str | None = Field(
        None, description="Vanilla server to measure the reference latency on, one request at a time."
    )
    reference_probes: int = Field(DEFAULT_REFERENCE_PROBES, ge=1, description="Requests for that measurement.")
    out_dir: Path | None = Field(None, description="Where records.parquet, stats.parquet and summary.json go.")
