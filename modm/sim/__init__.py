"""Cluster-scale discrete-event simulator of MoDM, Vanilla and NIRVANA serving, running the live policy code
(`KTable`, `GlobalMonitor`, the router's `route`, `should_admit`, the cache's index) on simulated GPU workers."""

from modm.sim.config import DEFAULT_PARAMETRIC_K_MIX, ParametricHitConfig, SimConfig
from modm.sim.embeddings import load_or_embed
from modm.sim.hits import FifoImageCache, HitModel, NoCache, ParametricHits
from modm.sim.nirvana import NirvanaLatentCache
from modm.sim.profiles import BUILTIN_PROFILES, LatencyProfile, resolve_profile
from modm.sim.results import FastMetrics, MonitorDecision, SimResult, WorkerSwitch
from modm.sim.simulator import Simulator, build_hit_model, simulate
from modm.sim.workload import Workload, WorkloadFactory, build_workload, synthetic_workload, workload_from_run

__all__ = [
    "BUILTIN_PROFILES",
    "DEFAULT_PARAMETRIC_K_MIX",
    "FastMetrics",
    "FifoImageCache",
    "HitModel",
    "LatencyProfile",
    "MonitorDecision",
    "NirvanaLatentCache",
    "NoCache",
    "ParametricHitConfig",
    "ParametricHits",
    "SimConfig",
    "SimResult",
    "Simulator",
    "WorkerSwitch",
    "Workload",
    "WorkloadFactory",
    "build_hit_model",
    "build_workload",
    "load_or_embed",
    "resolve_profile",
    "simulate",
    "synthetic_workload",
    "workload_from_run",
]
