"""Poll GET /v1/stats during a run, for allocation (large vs small replicas) and hit rate over time."""

from __future__ import annotations

import asyncio
import json

import httpx

from loadgen.protocol import STATS_PATH
from modm.workload.records import StatsSample

__all__ = ["StatsPoller", "parse_stats"]


def parse_stats(body: dict, t_s: float) -> StatsSample:
    """One sample from a /v1/stats body; fields the server does not report stay None."""
    allocation = body.get("allocation") or {}
    k_mix = body.get("k_mix")
    queues = body.get("queue_depths")
    batching = body.get("batching")
    return StatsSample(
        t_s=t_s,
        requests=_int_or_none(body.get("requests")),
        hits=_int_or_none(body.get("hits")),
        hit_rate=None if body.get("hit_rate") is None else float(body["hit_rate"]),
        large=_int_or_none(allocation.get("large")),
        small=_int_or_none(allocation.get("small")),
        k_mix_json=None if k_mix is None else json.dumps(k_mix, sort_keys=True),
        queue_depths_json=None if queues is None else json.dumps(queues, sort_keys=True),
        batching_json=None if not batching else json.dumps(batching, sort_keys=True),
    )


def _int_or_none(value) -> int | None:
    return None if value is None else int(value)


class StatsPoller:
    """Samples /v1/stats every ``period_s`` until stopped. A failed or malformed poll is counted, not fatal:
    the stats are context for the report, and must never stop or slow the load itself."""

    def __init__(self, http: httpx.AsyncClient, period_s: float, clock) -> None:
        self._http = http
        self._period_s = period_s
        self._clock = clock
        self._stop = asyncio.Event()
        self.samples: list[StatsSample] = []
        self.failures = 0

    async def poll_once(self) -> None:
        try:
            response = await self._http.get(STATS_PATH, timeout=max(1.0, min(self._period_s, 10.0)))
            response.raise_for_status()
            self.samples.append(parse_stats(response.json(), self._clock()))
        except (httpx.HTTPError, ValueError, TypeError, AttributeError):
            self.failures += 1

    async def run(self) -> None:
        while not self._stop.is_set():
            await self.poll_once()
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=self._period_s)
            except asyncio.TimeoutError:
                pass

    def stop(self) -> None:
        self._stop.set()
