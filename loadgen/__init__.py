"""modm's load generator: an async HTTP client that sends a workload to an images server and records the answers.

It talks to the server over HTTP only, so it can drive any deployment of the images API. The workload side (trace
readers, session model, arrival processes, records, reports, plots, run directories) is `modm.workload`, shared
with the simulator; it imports neither torch nor Ray, and neither does this package.
"""

from loadgen.client import LoadResult, StopReason, measure_reference_latency, run_load, send_load
from loadgen.config import ClientConfig, RunConfig
from loadgen.runner import RunArtifacts, run, run_async
from loadgen.sweep import SweepResult, run_sweep, sweep_async

__all__ = [
    "ClientConfig",
    "LoadResult",
    "RunArtifacts",
    "RunConfig",
    "StopReason",
    "SweepResult",
    "measure_reference_latency",
    "run",
    "run_async",
    "run_load",
    "run_sweep",
    "send_load",
    "sweep_async",
]
