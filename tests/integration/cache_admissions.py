"""Waiting on the session app's background cache admissions through /v1/stats (shared by the HTTP tests that need a
request's image in the cache before the next request)."""

from __future__ import annotations

import time

import httpx


def settled_entries(http: httpx.Client, headers: dict | None = None, timeout_s: float = 60) -> int:
    """The cache's entry count once nothing is in flight and no admission is pending: an earlier test's requests
    (the flood's, a cancelled one's) admit in the background and would otherwise count as this test's entries."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = http.get("/v1/stats", headers=headers).json()
        if stats["pending_admissions"] == 0 and not any(stats["queue_depths"].values()):
            return stats["cache"]["entries"]
        time.sleep(0.2)
    raise AssertionError("the app never went idle")


def wait_entries(http: httpx.Client, n: int, headers: dict | None = None, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if http.get("/v1/stats", headers=headers).json()["cache"]["entries"] >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"the cache never reached {n} entries")
