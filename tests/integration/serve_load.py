"""Closed-loop HTTP load on the session app until a condition on its replicas holds (shared by the tests that
need the monitor's split in a known state)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx


def running_replicas(deployment: str, app: str = "modm") -> int:
    from ray import serve

    return serve.status().applications[app].deployments[deployment].replica_states.get("RUNNING", 0)


def drive(base_url: str, prompts, tenants, until, timeout_s: float, workers: int = 3) -> dict:
    """Send generations (`prompts`, `tenants`: iterators) from `workers` threads until `until()` or the timeout.

    Returns the counts sent/ok/failed and whether `until()` was reached."""
    stop = threading.Event()
    counts = {"sent": 0, "ok": 0, "failed": []}
    lock = threading.Lock()

    def worker():
        with httpx.Client(base_url=base_url, timeout=60) as c:
            while not stop.is_set():
                with lock:
                    prompt, tenant = next(prompts), next(tenants)
                    counts["sent"] += 1
                r = c.post(
                    "/v1/images/generations",
                    json={"prompt": prompt, "size": "64x64", "steps": 2},
                    headers={"X-Tenant-Id": tenant},
                )
                with lock:
                    counts["ok"] += r.status_code == 200
                    if r.status_code != 200:
                        counts["failed"].append((r.status_code, r.text[:200]))

    deadline = time.monotonic() + timeout_s
    with ThreadPoolExecutor(workers) as pool:
        for _ in range(workers):
            pool.submit(worker)
        try:
            while time.monotonic() < deadline and not until():
                time.sleep(1)
        finally:
            stop.set()
    counts["reached"] = until()
    return counts
