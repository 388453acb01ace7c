"""Serve autoscaling policy that applies the global monitor's replica targets.

Why this shape (Ray 2.60): application-level autoscaling policies are marked "not yet supported" in this release,
while per-deployment custom policies (`AutoscalingConfig.policy`) are. The Monitor publishes each model deployment's
target in the cluster's key-value store (the GCS, which Serve's controller itself keeps its state in), and this
policy, called by the controller every control-loop tick, makes it the deployment's replica count. Reading the
target there rather than from the deployment's replicas lets a deployment go to zero replicas (a small-model tier
that is not chosen) and come back. Serve's min/max bounds still apply on top.
"""

from __future__ import annotations

from typing import Any

from ray.experimental import internal_kv
from ray.serve.config import AutoscalingContext

TARGETS_NAMESPACE = "modm_replica_targets"

__all__ = ["monitor_target_policy", "publish_target", "target_key"]


def target_key(app_name: str | None, deployment_name: str) -> str:
    return f"{app_name or ''}/{deployment_name}"


def publish_target(app_name: str | None, deployment_name: str, replicas: int) -> None:
    """Where the Monitor puts a deployment's replica target (a small GCS write; called once per window)."""
    internal_kv._internal_kv_put(
        target_key(app_name, deployment_name), str(int(replicas)), overwrite=True, namespace=TARGETS_NAMESPACE
    )


def published_target(app_name: str | None, deployment_name: str) -> int | None:
    value = internal_kv._internal_kv_get(target_key(app_name, deployment_name), namespace=TARGETS_NAMESPACE)
    return None if value is None else int(value)


def monitor_target_policy(ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
    desired = published_target(ctx.app_name, ctx.deployment_name)
    if desired is None:  # the monitor has not published yet: keep what we have
        return ctx.target_num_replicas, ctx.policy_state
    desired = max(ctx.capacity_adjusted_min_replicas, min(ctx.capacity_adjusted_max_replicas, desired))
    return desired, ctx.policy_state
