"""Serve autoscaling policy that applies the global monitor's replica targets.

Why this shape (Ray 2.60): application-level autoscaling policies are marked "not yet supported" in this release,
while per-deployment custom policies (`AutoscalingConfig.policy`) and replica-reported custom metrics
(`record_autoscaling_stats`) are. So the monitor broadcasts its target to the LargeModel and SmallModel replicas,
each replica reports it as a custom metric, and this policy makes it the deployment's replica count. The controller
calls it every control-loop tick; Serve's min/max bounds still apply on top.
"""

from __future__ import annotations

from typing import Any

from ray.serve.config import AutoscalingContext

from deployments.constants import TARGET_REPLICAS_METRIC


def monitor_target_policy(ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
    reported = (ctx.aggregated_metrics or {}).get(TARGET_REPLICAS_METRIC, {})
    if not reported:  # no replica has heard from the monitor yet: keep what we have
        return ctx.target_num_replicas, ctx.policy_state
    # Every replica reports the same broadcast value; the newest may lag by one report interval, so take the max
    # of the rounded values (a stale larger value is corrected at the next tick).
    desired = max(int(round(v)) for v in reported.values())
    desired = max(ctx.capacity_adjusted_min_replicas, min(ctx.capacity_adjusted_max_replicas, desired))
    return desired, ctx.policy_state
