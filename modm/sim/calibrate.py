"""A latency profile fitted to a measured run: the server's per-request `generate` timings, per model and k.

The router reports `modm.timings_s` with each response; loadgen stores it in `timings_json`. For each model the
fit is `generate = fixed + (1 - k/T)(full - fixed)` by least squares over its requests (misses have k = 0); a model
seen at one k only gets `fixed = 0`. `router_s` is the median of embed + retrieve.

`generate` is measured at the router, so it includes any wait for a free replica: fit on a run at low load
(closed loop with one client, or a low Poisson rate), not on the run being predicted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from modm.roles import ModelRole
from modm.sim.profiles import LatencyProfile
from modm.workload.records import Outcome, RequestRecord

__all__ = ["profile_from_records"]


def profile_from_records(
    records: Sequence[RequestRecord],
    *,
    total_steps: int = 50,
    gpu: str = "measured",
    load_s: dict[ModelRole, float] | None = None,
) -> LatencyProfile:
    samples: dict[ModelRole, list[tuple[float, float]]] = {role: [] for role in ModelRole}
    router: list[float] = []
    for record in records:
        if record.warm_up or record.outcome is not Outcome.OK or not record.timings_json or record.model is None:
            continue
        timings = json.loads(record.timings_json)
        if "generate" not in timings:
            continue
        k = record.k if record.hit and record.k else 0
        samples[ModelRole(record.model)].append((1.0 - k / total_steps, float(timings["generate"])))
        if "embed" in timings or "retrieve" in timings:
            router.append(float(timings.get("embed", 0.0)) + float(timings.get("retrieve", 0.0)))
    if not samples[ModelRole.LARGE]:
        raise ValueError(
            "no successful measured request of the large model carries a 'generate' timing; cannot fit a profile"
        )
    full, fixed = {}, {}
    for role, points in samples.items():
        if not points:
            continue
        fraction, seconds = np.array(points).T
        if np.ptp(fraction) < 1e-9:
            full[role] = float(np.median(seconds) / fraction[0])
            continue
        slope, intercept = np.polyfit(fraction, seconds, 1)
        full[role] = float(max(intercept + slope, 1e-6))
        fixed[role] = float(min(max(intercept, 0.0), full[role]))
    return LatencyProfile(
        gpu=gpu,
        full_generation_s=full,
        fixed_s=fixed,
        **({"load_s": load_s} if load_s is not None else {}),
        router_s=float(np.median(router)) if router else 0.0,
        source=f"fitted to {sum(len(p) for p in samples.values())} measured requests' generate timings",
    )
