"""Helpers for driving a Serve app on this machine: a free loopback port, and waiting until the app answers."""

from __future__ import annotations

import socket
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout_s: float = 600.0, poll_s: float = 0.5) -> float:
    """Poll `url`/healthz until it answers 200; returns the seconds waited. Raises TimeoutError after timeout_s."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(poll_s)
    raise TimeoutError(f"{url} did not become healthy within {timeout_s:.0f}s")
