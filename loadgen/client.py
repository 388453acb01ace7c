"""The async load loop: send a workload on a schedule (open loop) or back to back (closed loop), record everything.

A run is bounded in count (the workload) and in time (``max_duration_s``), and ends early when the server stops
answering (``max_consecutive_failures`` timeouts/connection errors in a row). Whatever happens, every request of the
workload has a record, so a dead server still yields a partial report rather than a hang.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import httpx
import numpy as np
from tqdm.auto import tqdm

from loadgen.config import ClientConfig
from loadgen.protocol import make_http_client, send_one
from loadgen.server_stats import StatsPoller
from modm.workload.records import Outcome, RequestRecord, StatsSample
from modm.workload.trace import TraceRequest

__all__ = ["LoadResult", "StopReason", "measure_reference_latency", "run_load", "send_load"]

_ANSWERED = (Outcome.OK, Outcome.HTTP_ERROR, Outcome.BAD_RESPONSE)
_UNANSWERED = (Outcome.TIMEOUT, Outcome.CONNECTION_ERROR)


class StopReason(str, Enum):
    COMPLETED = "completed"  # every request was sent and finished (successfully or not)
    TIME_LIMIT = "time-limit"  # max_duration_s elapsed
    SERVER_UNRESPONSIVE = "server-unresponsive"  # too many timeouts/connection errors in a row


@dataclass
class LoadResult:
    records: list[RequestRecord]
    stats: list[StatsSample] = field(default_factory=list)
    stop_reason: StopReason = StopReason.COMPLETED
    started_unix_s: float = 0.0
    duration_s: float = 0.0
    stats_poll_failures: int = 0


class _Run:
    """State shared by the dispatcher and the request tasks of one run."""

    def __init__(self, trace: Sequence[TraceRequest], config: ClientConfig, http: httpx.AsyncClient) -> None:
        self.trace = trace
        self.config = config
        self.http = http
        self.t0 = time.monotonic()
        self.records = [
            RequestRecord(
                index=i,
                prompt=r.prompt,
                source_row=r.source_row,
                tenant=config.tenant,
                user=r.user,
                session=r.session,
                edit=r.edit,
                warm_up=r.warm_up,
            )
            for i, r in enumerate(trace)
        ]
        self.stopped = asyncio.Event()
        self.stop_reason = StopReason.COMPLETED
        self.consecutive_failures = 0
        self.in_flight = asyncio.Semaphore(config.max_in_flight)
        self.progress = tqdm(total=len(trace), unit="req", disable=not config.progress, dynamic_ncols=True)
        self.errors = 0

    def clock(self) -> float:
        return time.monotonic() - self.t0

    def stop(self, reason: StopReason) -> None:
        if not self.stopped.is_set():
            self.stop_reason = reason
            self.stopped.set()

    async def sleep_until(self, t_s: float) -> bool:
        """Sleep until ``t_s`` after the start; False if the run was stopped meanwhile."""
        delay = t_s - self.clock()
        if delay > 0:
            try:
                await asyncio.wait_for(self.stopped.wait(), timeout=delay)
            except asyncio.TimeoutError:
                pass
        return not self.stopped.is_set()

    async def send(self, index: int) -> None:
        record = self.records[index]
        try:
            await send_one(self.http, self.trace[index], record, self.config, self.clock)
        except asyncio.CancelledError:
            record.outcome, record.error = Outcome.CANCELLED, f"run stopped ({self.stop_reason.value})"
            raise
        finally:
            self.in_flight.release()
            self.progress.update(1)
        if record.outcome in _UNANSWERED:
            self.consecutive_failures += 1
            if self.consecutive_failures >= self.config.max_consecutive_failures:
                self.stop(StopReason.SERVER_UNRESPONSIVE)
        elif record.outcome in _ANSWERED:
            self.consecutive_failures = 0
        if record.outcome is not Outcome.OK:
            self.errors += 1
            self.progress.set_postfix(errors=self.errors, refresh=False)


async def send_load(
    trace: Sequence[TraceRequest],
    config: ClientConfig,
    *,
    offsets_s: np.ndarray | None,
    concurrency: int = 1,
    transport: httpx.AsyncBaseTransport | None = None,
) -> LoadResult:
    """Send ``trace``: request i at ``offsets_s[i]`` seconds after the start, or, if ``offsets_s`` is None, from
    ``concurrency`` closed-loop clients. ``transport`` lets tests inject an in-process transport."""
    if offsets_s is not None and len(offsets_s) != len(trace):
        raise ValueError(f"{len(offsets_s)} arrival offsets for {len(trace)} requests")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    started_unix_s = time.time()
    # Stats get their own connection pool: a saturated request pool must not starve (or be delayed by) the polls.
    stats_config = config.model_copy(update={"max_in_flight": 2})
    async with (
        make_http_client(config, transport=transport) as http,
        make_http_client(stats_config, transport=transport) as stats_http,
    ):
        run = _Run(trace, config, http)
        poller = StatsPoller(stats_http, config.stats_poll_period_s, run.clock) if config.stats_poll_period_s else None
        poll_task = asyncio.create_task(poller.run()) if poller else None
        tasks: set[asyncio.Task] = set()
        if offsets_s is None:
            driver = asyncio.create_task(_closed_loop(run, concurrency))
        else:
            driver = asyncio.create_task(_open_loop(run, offsets_s, tasks))
        try:
            await _wait_bounded(run, driver, tasks)
        finally:
            run.progress.close()
            if poller is not None:
                poller.stop()
                await poll_task
                await poller.poll_once()  # the final state, e.g. the allocation at the end of the run
    return LoadResult(
        records=run.records,
        stats=poller.samples if poller else [],
        stop_reason=run.stop_reason,
        started_unix_s=started_unix_s,
        duration_s=run.clock(),
        stats_poll_failures=poller.failures if poller else 0,
    )


def run_load(
    trace: Sequence[TraceRequest], config: ClientConfig, *, offsets_s: np.ndarray | None, concurrency: int = 1
) -> LoadResult:
    """Blocking wrapper of ``send_load`` for scripts and the CLI (not for use inside a running event loop)."""
    return asyncio.run(send_load(trace, config, offsets_s=offsets_s, concurrency=concurrency))


async def _open_loop(run: _Run, offsets_s: np.ndarray, tasks: set[asyncio.Task]) -> None:
    for index, offset in enumerate(offsets_s):
        if not await run.sleep_until(float(offset)):
            return
        run.records[index].arrival_s = float(offset)  # the due time: a late client still counts the delay
        if not await _acquire_unless_stopped(run):
            run.records[index].arrival_s = None
            return
        task = asyncio.create_task(run.send(index))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(set(tasks))


async def _closed_loop(run: _Run, concurrency: int) -> None:
    next_index = iter(range(len(run.trace)))

    async def client() -> None:
        for index in next_index:  # shared iterator: each index goes to exactly one client
            if run.stopped.is_set():
                return
            await run.in_flight.acquire()
            run.records[index].arrival_s = run.clock()
            await run.send(index)

    await asyncio.gather(*(client() for _ in range(concurrency)))


async def _acquire_unless_stopped(run: _Run) -> bool:
    acquire = asyncio.create_task(run.in_flight.acquire())
    stop = asyncio.create_task(run.stopped.wait())
    done, _ = await asyncio.wait({acquire, stop}, return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    if acquire in done:
        if run.stopped.is_set():
            run.in_flight.release()
            return False
        return True
    acquire.cancel()
    return False


async def _wait_bounded(run: _Run, driver: asyncio.Task, tasks: set[asyncio.Task]) -> None:
    """Wait for the driver until the time limit or an early stop; then cancel whatever is still in flight."""
    stop_waiter = asyncio.create_task(run.stopped.wait())
    done, _ = await asyncio.wait(
        {driver, stop_waiter}, timeout=run.config.max_duration_s, return_when=asyncio.FIRST_COMPLETED
    )
    stop_waiter.cancel()
    if driver in done and driver.exception() is not None:
        raise driver.exception()
    if driver in done and not run.stopped.is_set():
        return
    run.stop(StopReason.TIME_LIMIT)  # no-op if the run already stopped for another reason
    for task in (driver, *tasks):
        task.cancel()
    await asyncio.gather(driver, *tasks, return_exceptions=True)


async def measure_reference_latency(
    trace: Sequence[TraceRequest],
    config: ClientConfig,
    n_probes: int,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> float:
    """The standalone large-model latency: ``n_probes`` requests sent one at a time to a vanilla server; the
    median of the successful ones. The first request doubles as a warm-up and is discarded if there are others."""
    if n_probes < 1 or len(trace) < 1:
        raise ValueError(f"need at least one probe and one prompt (n_probes={n_probes}, prompts={len(trace)})")
    probes = [trace[i % len(trace)] for i in range(n_probes + (1 if n_probes > 1 else 0))]
    result = await send_load(
        probes,
        config.model_copy(update={"progress": False, "stats_poll_period_s": None}),
        offsets_s=None,
        concurrency=1,
        transport=transport,
    )
    measured = result.records[1:] if len(result.records) > 1 else result.records
    latencies = [r.latency_s for r in measured if r.outcome is Outcome.OK]
    if not latencies:
        errors = sorted({r.error or r.outcome.value for r in measured})
        raise RuntimeError(f"reference latency: no probe to {config.url} succeeded ({errors})")
    return float(np.median(latencies))
