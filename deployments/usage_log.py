"""Usage of model replicas that have stopped, kept in the cluster's key-value store (the GCS).

A replica the monitor removes mid-run would take its busy seconds, images and joules with it; on shutdown (Serve
calls the replica's `__del__`) it writes them here under its app, deployment and replica id, and a benchmark adds
them to the live replicas' (tools/benchmark.py `model_usage`).
"""

from __future__ import annotations

import json

from ray.experimental import internal_kv

USAGE_NAMESPACE = "modm_departed_usage"

__all__ = ["departed_usage", "forget_departed", "record_departed"]


def record_departed(app_name: str, deployment_name: str, replica_id: str, usage: dict) -> None:
    key = f"{app_name}/{deployment_name}/{replica_id}"
    internal_kv._internal_kv_put(key, json.dumps(usage), overwrite=True, namespace=USAGE_NAMESPACE)


def departed_usage(app_name: str, deployment_names: list[str]) -> list[dict]:
    """The final usage of every stopped replica of these deployments of `app_name`."""
    usage = []
    for name in deployment_names:
        for key in internal_kv._internal_kv_list(f"{app_name}/{name}/", namespace=USAGE_NAMESPACE):
            value = internal_kv._internal_kv_get(key, namespace=USAGE_NAMESPACE)
            if value is not None:
                usage.append(json.loads(value))
    return usage


def forget_departed(app_name: str) -> None:
    """Drop what earlier apps of this name left (before a new run under the same name)."""
    for key in internal_kv._internal_kv_list(f"{app_name}/", namespace=USAGE_NAMESPACE):
        internal_kv._internal_kv_del(key, namespace=USAGE_NAMESPACE)
