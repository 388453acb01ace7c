"""Pure decision logic: numbers in, numbers out. No models, no Ray; shared by the request pipeline and the simulator.

The names below load on first use (PEP 562): the config schema imports `modm.policy.tables`, which runs this file,
and most policy modules import the schema, so importing them here eagerly would be a cycle.
"""

from importlib import import_module

_HOMES = {
    "should_admit": "admission",
    "BatchCapacity": "capacity",
    "QualitySample": "calibration",
    "fit_k_table": "calibration",
    "hit_cost": "calibration",
    "throughput_gain_bound": "calibration",
    "Allocation": "monitor",
    "GlobalMonitor": "monitor",
    "PIDController": "monitor",
    "Throughput": "monitor",
    "WindowStats": "monitor",
    "quality_target": "monitor",
    "refine_fraction": "monitor",
    "throughput_target": "monitor",
    "workloads": "monitor",
    "PoolState": "routing",
    "route": "routing",
    "InvalidRequestError": "requests",
    "check_dimensions": "requests",
    "check_request_limits": "requests",
    "KTable": "retrieval",
    "LoadBoard": "load_view",
    "PeerLoad": "load_view",
    "pool_in_flight": "load_view",
    "RetrievalDecision": "retrieval",
    "KRule": "tables",
    "MINILM_TEXT_TABLE": "tables",
    "MODM_CLIP_TABLE": "tables",
    "MODM_TABLE_TOTAL_STEPS": "tables",
    "NAMED_K_TABLES": "tables",
    "NIRVANA_K_CHOICES": "tables",
    "NIRVANA_TABLE": "tables",
    "WindowCounter": "window",
    "WindowCounts": "window",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
