"""Load-generator client defaults, named with their units. Each can be overridden by an environment variable of the
same name."""

from __future__ import annotations

from modm.workload.constants import env_override

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_MAX_CONSECUTIVE_FAILURES",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_REFERENCE_PROBES",
    "DEFAULT_REQUEST_TIMEOUT_S",
    "DEFAULT_STATS_POLL_PERIOD_S",
]


DEFAULT_IMAGE_SIZE = "256x256"  # the CPU tiny zoo; GPU runs pass 1024x1024
# A request that takes longer than this is recorded as a timeout; the run never waits on it further.
DEFAULT_REQUEST_TIMEOUT_S = env_override("LOADGEN_REQUEST_TIMEOUT_S", 600.0)
DEFAULT_CONNECT_TIMEOUT_S = env_override("LOADGEN_CONNECT_TIMEOUT_S", 10.0)
# Open-loop arrivals beyond this many outstanding requests wait on the client (their latency includes the wait).
DEFAULT_MAX_IN_FLIGHT = env_override("LOADGEN_MAX_IN_FLIGHT", 1024, int)
# This many timeouts/connection failures in a row means the server stopped answering: stop sending.
DEFAULT_MAX_CONSECUTIVE_FAILURES = env_override("LOADGEN_MAX_CONSECUTIVE_FAILURES", 20, int)
DEFAULT_STATS_POLL_PERIOD_S = env_override("LOADGEN_STATS_POLL_PERIOD_S", 5.0)
DEFAULT_REFERENCE_PROBES = env_override("LOADGEN_REFERENCE_PROBES", 3, int)
