"""modm's load generator: trace readers, arrival processes, an async HTTP client, reports and plots.

It talks to the server over HTTP only (it never imports ``modm``), so it can drive any deployment of the images API.
"""

from loadgen.arrivals import (
    arrival_offsets,
    fluctuating_offsets,
    poisson_offsets,
    replay_offsets,
    sigmoid_ramp_offsets,
    worker_seed,
)
from loadgen.client import LoadResult, StopReason, measure_reference_latency, run_load, send_load
from loadgen.compare import Comparison, compare_runs, format_comparison
from loadgen.config import (
    ArrivalConfig,
    ArrivalKind,
    ClientConfig,
    EditKind,
    EditWeights,
    RunConfig,
    SessionConfig,
    TraceConfig,
    TraceFormat,
)
from loadgen.errors import TraceFormatError
from loadgen.readers import load_trace, read_diffusiondb_parquet, read_mjhq_json, read_prompt_lines, read_prompt_table
from loadgen.records import Outcome, RequestRecord, read_records, write_records
from loadgen.report import RunSummary, format_summary, summarize
from loadgen.runner import RunArtifacts, load_run, prepare_workload, run, run_async
from loadgen.sessions import apply_session_model
from loadgen.sweep import SweepResult, run_sweep, sweep_async
from loadgen.trace import TraceRequest

__all__ = [
    "ArrivalConfig",
    "ArrivalKind",
    "ClientConfig",
    "Comparison",
    "EditKind",
    "EditWeights",
    "LoadResult",
    "Outcome",
    "RequestRecord",
    "RunArtifacts",
    "RunConfig",
    "RunSummary",
    "SessionConfig",
    "StopReason",
    "SweepResult",
    "TraceConfig",
    "TraceFormat",
    "TraceFormatError",
    "TraceRequest",
    "apply_session_model",
    "arrival_offsets",
    "compare_runs",
    "fluctuating_offsets",
    "format_comparison",
    "format_summary",
    "load_run",
    "load_trace",
    "measure_reference_latency",
    "poisson_offsets",
    "prepare_workload",
    "read_diffusiondb_parquet",
    "read_mjhq_json",
    "read_prompt_lines",
    "read_prompt_table",
    "read_records",
    "replay_offsets",
    "run",
    "run_async",
    "run_load",
    "run_sweep",
    "send_load",
    "sigmoid_ramp_offsets",
    "summarize",
    "sweep_async",
    "worker_seed",
    "write_records",
]
