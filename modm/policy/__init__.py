"""Pure decision logic: numbers in, numbers out. No models, no Ray; shared by the request pipeline and the simulator."""

from modm.policy.admission import should_admit
from modm.policy.calibration import QualitySample, fit_k_table
from modm.policy.monitor import (
    Allocation,
    GlobalMonitor,
    PIDController,
    Throughput,
    WindowStats,
    quality_target,
    refine_fraction,
    throughput_target,
    workloads,
)
from modm.policy.routing import PoolState, route
from modm.policy.requests import InvalidRequestError, check_dimensions, check_request_limits
from modm.policy.retrieval import NIRVANA_K_CHOICES, NIRVANA_TABLE, KTable, RetrievalDecision
from modm.policy.window import WindowCounter, WindowCounts

__all__ = [
    "Allocation",
    "GlobalMonitor",
    "InvalidRequestError",
    "check_dimensions",
    "check_request_limits",
    "KTable",
    "NIRVANA_K_CHOICES",
    "NIRVANA_TABLE",
    "PIDController",
    "PoolState",
    "QualitySample",
    "RetrievalDecision",
    "Throughput",
    "WindowStats",
    "fit_k_table",
    "quality_target",
    "refine_fraction",
    "route",
    "should_admit",
    "throughput_target",
    "workloads",
    "WindowCounter",
    "WindowCounts",
]
