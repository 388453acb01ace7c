"""The discrete-event simulator: GPU workers, the router's queues, the monitor's windows, one event heap.

Time only advances through events: a request arrives (retrieval decides hit/miss and k with the run's hit model),
becomes ready after its lookup in the cache index tier, if modelled (modm/sim/index_tier.py), and the router's
overhead, is sent to a model pool by the live router rule
(`modm.policy.routing.route`: misses to large; hits to small, or in quality mode to an idle large replica), waits in
that pool's FIFO queue, occupies a worker of the pool for profile.service_s(model, k), and its completion may admit
its output to the cache.
Every `monitor.window_s` the live `GlobalMonitor` turns the window's R, H and P(k) into a new large/small split;
worker i should run the large model iff i < N_large (MoDM's allocation list), and a worker whose model changes
finishes its current request first, then is unavailable for the new model's load time.

Equal-time events run in a fixed order (completions, switches, ready, monitor, arrivals; then by insertion), so a
run is a pure function of its config, workload and hit model.
"""

from __future__ import annotations

import heapq
import json
import math
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from enum import IntEnum

import faiss
import numpy as np

from modm.config.schema import SystemMode
from modm.policy import KTable, RetrievalDecision, WindowCounter
from modm.policy.tiers import TieredMonitor
from modm.policy.routing import PoolState, route
from modm.roles import ModelRole
from modm.sim.config import SimConfig
from modm.cache import should_admit
from modm.sim.hits import FifoImageCache, HitModel, NoCache, ParametricHits, check_embeddings
from modm.sim.index_tier import IndexTier
from modm.sim.nirvana import NirvanaLatentCache
from modm.sim.results import MonitorDecision, SimResult, WorkerSwitch
from modm.sim.workload import Workload
from modm.workload.records import StatsSample

__all__ = ["Simulator", "build_hit_model", "simulate"]

LARGE_CODE = 0  # served_by: 0 the large model, 1 + i the i-th small tier (1: 'small')


class _Event(IntEnum):
    COMPLETE = 0
    SWITCHED = 1
    READY = 2
    MONITOR = 3
    ARRIVAL = 4  # closed-loop releases; open-loop arrivals are read from the offsets array


class _State(IntEnum):
    IDLE = 0
    BUSY = 1
    SWITCHING = 2


@contextmanager
def _single_threaded_faiss() -> Iterator[None]:
    """One query at a time gains nothing from OpenMP, and on shared cores its threads cost 20x."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def build_hit_model(
    config: SimConfig, workload: Workload, embeddings: np.ndarray | None = None, prefill: np.ndarray | None = None
) -> HitModel:
    """The hit model `config` asks for: no cache (vanilla), parametric, or retrieval over `embeddings`; caches
    start with the outputs keyed by the rows of `prefill` (a warm cache), if given."""
    model = _hit_model(config, workload, embeddings)
    if prefill is not None and len(prefill):
        if embeddings is not None and prefill.shape[1:] != embeddings.shape[1:]:
            raise ValueError(f"prefill keys have shape {prefill.shape}, the workload's embeddings {embeddings.shape}")
        model.prefill(np.ascontiguousarray(prefill, dtype=np.float32))
    return model


def _hit_model(config: SimConfig, workload: Workload, embeddings: np.ndarray | None) -> HitModel:
    total_steps = config.policy.total_steps
    if config.system is SystemMode.VANILLA:
        return NoCache()
    if config.parametric is not None:
        return ParametricHits(
            workload.n_requests,
            config.parametric.hit_rate,
            config.parametric.k_mix,
            total_steps,
            np.random.default_rng(config.seed),
        )
    if embeddings is None:
        raise ValueError(
            f"system {config.system.value!r} retrieves over prompt embeddings: pass embeddings "
            "(one row per request) or configure the parametric hit model"
        )
    embeddings = check_embeddings(embeddings, workload.n_requests)
    if config.system is SystemMode.NIRVANA:
        return NirvanaLatentCache(embeddings, config.nirvana_capacity_prompts, KTable.nirvana(total_steps))
    return FifoImageCache(embeddings, config.cache_capacity, KTable.from_config(config.policy), config.admission)


class Simulator:
    def __init__(self, config: SimConfig, workload: Workload, hit_model: HitModel):
        self.config = config
        self.workload = workload
        self.hits = hit_model
        self.profile = config.profile
        self.total_steps = config.policy.total_steps
        n, g = workload.n_requests, config.n_gpus
        # Per request.
        self.arrival_s = np.full(n, np.nan)
        self.start_s = np.full(n, np.nan)
        self.end_s = np.full(n, np.nan)
        self.hit = np.zeros(n, dtype=bool)
        self.k = np.zeros(n, dtype=np.int16)
        self.score = np.full(n, np.nan, dtype=np.float32)
        self.served_by = np.full(n, -1, dtype=np.int8)
        self.worker = np.full(n, -1, dtype=np.int32)
        self.completions = np.zeros(n, dtype=np.int32)
        self._decisions: dict[int, RetrievalDecision] = {}  # requests in the system
        # Per worker.
        # MoDM: the tier policy (modm.policy.tiers) then Algorithm 1; one tier ('small') unless the profile has more.
        self.monitor: TieredMonitor | None = None
        self.tiers = self.profile.tier_names()
        if config.system is SystemMode.MODM:
            self.monitor = TieredMonitor(
                config.monitor_config(), self.tiers, initial_large=config.monitor_initial_large
            )
            n_large = self.monitor.monitor.current.large
        else:
            n_large = g
        self.tier = self.tiers[0] if self.tiers else None  # the small tier that refines hits now
        self.assigned = [ModelRole.LARGE if w < n_large else ModelRole.SMALL for w in range(g)]
        self.loaded = list(self.assigned)  # models are loaded before time 0
        self.loading: list[ModelRole | None] = [None] * g  # the model a switching worker is loading
        # The small tier a worker holds (or is loading); None on large workers.
        self.loaded_tier: list[str | None] = [self.tier if r is ModelRole.SMALL else None for r in self.assigned]
        self.loading_tier: list[str | None] = [None] * g
        self.state = [_State.IDLE] * g
        self.idle: dict[ModelRole, list[int]] = {
            role: [w for w in reversed(range(g)) if self.loaded[w] is role] for role in ModelRole
        }
        self.n_assigned = {ModelRole.LARGE: n_large, ModelRole.SMALL: g - n_large}
        # One FIFO queue per model pool (vanilla and NIRVANA use only the large one), and the router's count of
        # requests sent to each pool and not yet answered (what `route` reads as in_flight).
        self.queues: dict[ModelRole, deque[int]] = {role: deque() for role in ModelRole}
        self.in_flight = {role: 0 for role in ModelRole}
        # Events, window counters.
        self.heap: list[tuple[float, int, int, int]] = []  # (time, event kind, sequence, payload)
        self._sequence = 0
        self.now = 0.0
        self.events = 0
        # The router's and monitor's own counter: one per monitor window, and one over the whole run.
        self._window = WindowCounter()
        self._totals = WindowCounter()
        self.stats: list[StatsSample] = []
        self.decisions_log: list[MonitorDecision] = []
        self.switches: list[WorkerSwitch] = []
        # MoDM's image-cache index tier (NIRVANA's latent cache is another deployment, not modelled here).
        modm = config.system is SystemMode.MODM
        self.index_tier = IndexTier(config.index_tier) if config.index_tier is not None and modm else None

    # ------------------------------------------------------------------------------------------------ events
    def _push(self, t: float, kind: _Event, payload: int) -> None:
        heapq.heappush(self.heap, (t, int(kind), self._sequence, payload))
        self._sequence += 1

    def run(self) -> SimResult:
        wall_start = time.perf_counter()
        with _single_threaded_faiss():
            self._loop()
        wall_s = time.perf_counter() - wall_start
        return SimResult(
            config=self.config,
            workload=self.workload,
            arrival_s=self.arrival_s,
            start_s=self.start_s,
            end_s=self.end_s,
            hit=self.hit,
            k=self.k,
            score=self.score,
            served_by=self.served_by,
            worker=self.worker,
            completions=self.completions,
            stats=self.stats,
            monitor_decisions=self.decisions_log,
            switches=self.switches,
            events=self.events,
            wall_s=wall_s,
            index_tier=None if self.index_tier is None else self.index_tier.report(),
        )

    def _loop(self) -> None:
        wl = self.workload
        offsets = wl.offsets_s
        n = wl.n_requests
        if offsets is None:  # closed loop: the first `concurrency` requests go out at time 0
            for i in range(min(wl.concurrency, n)):
                self._push(0.0, _Event.ARRIVAL, i)
            released = min(wl.concurrency, n)
        else:
            released = 0
        self._sample_stats(self._window.peek().k_counts)
        if n:
            self._push(self.config.monitor.window_s, _Event.MONITOR, 0)
        next_arrival = 0  # open loop: index of the next offset to read
        arrived = 0
        while True:
            t_next = offsets[next_arrival] if offsets is not None and next_arrival < n else math.inf
            if self.heap and self.heap[0][0] <= t_next:
                t, kind, _, payload = heapq.heappop(self.heap)
            elif t_next < math.inf:
                t, kind, payload = t_next, _Event.ARRIVAL, next_arrival
                next_arrival += 1
            else:
                break
            self.now = t
            self.events += 1
            if kind == _Event.COMPLETE:
                self._complete(payload)
                if offsets is None and released < n:
                    self._push(t, _Event.ARRIVAL, released)  # that client sends its next request
                    released += 1
            elif kind == _Event.ARRIVAL:
                self._arrive(payload)
                arrived += 1
            elif kind == _Event.READY:
                self._enqueue(payload)
            elif kind == _Event.SWITCHED:
                self._switched(payload)
            elif kind == _Event.MONITOR:
                # MoDM's scheduler updates the monitor on arrivals only: a window cut short by the end of the
                # workload would report a falling rate that no one is sending, so it is sampled, not acted on.
                self._monitor_tick(act=arrived < n)
                if arrived < n:
                    self._push(t + self.config.monitor.window_s, _Event.MONITOR, 0)
            self._dispatch()
        self._sample_stats(self._window.peek().k_counts)

    # ---------------------------------------------------------------------------------------------- requests
    def _arrive(self, request: int) -> None:
        self.arrival_s[request] = self.now
        decision = self.hits.decide(request)
        self._decisions[request] = decision
        self.hit[request] = decision.hit
        self.k[request] = decision.k
        if decision.score is not None:
            self.score[request] = decision.score
        for counter in (self._window, self._totals):  # arrival and decision happen at once here
            counter.arrived()
            counter.decided(decision.hit, decision.k)
        ready_s = self.now if self.index_tier is None else self.index_tier.lookup(self.now)
        ready_s += self.profile.router_s
        if ready_s > self.now:
            self._push(ready_s, _Event.READY, request)
        else:
            self._enqueue(request)

    def _enqueue(self, request: int) -> None:
        if self.monitor is None:  # vanilla and NIRVANA: every replica runs the large model
            role = ModelRole.LARGE
        else:
            pools = {r: PoolState(replicas=self.n_assigned[r], in_flight=self.in_flight[r]) for r in ModelRole}
            role = ModelRole(
                route(
                    bool(self.hit[request]), self.config.monitor.mode, pools[ModelRole.LARGE], pools[ModelRole.SMALL]
                ).value
            )
        self.in_flight[role] += 1
        self.queues[role].append(request)

    def _dispatch(self) -> None:
        for role in ModelRole:
            queue, idle = self.queues[role], self.idle[role]
            while queue and idle:
                self._start(idle.pop(), queue.popleft())

    def _start(self, worker: int, request: int) -> None:
        role = self.loaded[worker]
        self.state[worker] = _State.BUSY
        self.start_s[request] = self.now
        self.worker[request] = worker
        if role is ModelRole.LARGE:
            self.served_by[request] = LARGE_CODE
            service = self.profile.service_s(role, int(self.k[request]), self.total_steps)
        else:
            tier = self.loaded_tier[worker]
            self.served_by[request] = 1 + self.tiers.index(tier)
            service = self.profile.tier_service_s(tier, int(self.k[request]), self.total_steps)
        self._push(self.now + service, _Event.COMPLETE, worker * self.workload.n_requests + request)

    def _complete(self, worker_request: int) -> None:
        worker, request = divmod(worker_request, self.workload.n_requests)
        self.end_s[request] = self.now
        self.completions[request] += 1
        role = self.loaded[worker]
        self.in_flight[role] -= 1
        decision = self._decisions.pop(request)
        from_large = role is ModelRole.LARGE
        self.hits.complete(request, decision, from_large_model=from_large)
        if self.index_tier is not None and should_admit(
            self.config.admission, from_large_model=from_large, refined=decision.hit
        ):
            self.index_tier.admit(self.now)
        self._become_available(worker)

    # ----------------------------------------------------------------------------------------------- workers
    def _holds_target(self, worker: int) -> bool:
        target = self.assigned[worker]
        return self.loaded[worker] is target and (target is ModelRole.LARGE or self.loaded_tier[worker] == self.tier)

    def _become_available(self, worker: int) -> None:
        target = self.assigned[worker]
        if self._holds_target(worker):
            self.state[worker] = _State.IDLE
            self.idle[target].append(worker)
            return
        self.state[worker] = _State.SWITCHING
        self.loading[worker] = target
        self.loading_tier[worker] = None if target is ModelRole.LARGE else self.tier
        model = target.value if target is ModelRole.LARGE else self.tier
        switch_s = self.profile.switch_s(target) if target is ModelRole.LARGE else self.profile.tier_switch_s(model)
        self.switches.append(WorkerSwitch(t_s=self.now, worker=worker, to_model=model))
        self._push(self.now + switch_s, _Event.SWITCHED, worker)

    def _switched(self, worker: int) -> None:
        self.loaded[worker], self.loaded_tier[worker] = self.loading[worker], self.loading_tier[worker]
        self.loading[worker] = self.loading_tier[worker] = None
        self._become_available(worker)  # idle, or switch again if the allocation or the tier moved meanwhile

    def _reassign(self, n_large: int) -> None:
        for worker in range(self.config.n_gpus):
            self.assigned[worker] = ModelRole.LARGE if worker < n_large else ModelRole.SMALL
            if self.state[worker] is _State.IDLE and not self._holds_target(worker):
                self.idle[self.loaded[worker]].remove(worker)
                self._become_available(worker)
        self.n_assigned = {ModelRole.LARGE: n_large, ModelRole.SMALL: self.config.n_gpus - n_large}
        if self.n_assigned[ModelRole.SMALL] == 0 and self.queues[ModelRole.SMALL]:
            # The small pool was scaled to zero (min_small = 0) with requests waiting: the large pool takes them
            # (refining hits) rather than leaving them queued for replicas that no longer exist.
            moved = len(self.queues[ModelRole.SMALL])
            self.queues[ModelRole.LARGE].extend(self.queues[ModelRole.SMALL])
            self.queues[ModelRole.SMALL].clear()
            self.in_flight[ModelRole.SMALL] -= moved
            self.in_flight[ModelRole.LARGE] += moved

    # ----------------------------------------------------------------------------------------------- monitor
    def _monitor_tick(self, *, act: bool) -> None:
        window_k = self._window.peek().k_counts
        if self.monitor is not None and act:
            stats = self._window.close(self.config.monitor.window_s, self.total_steps)
            tiered = self.monitor.step(stats, self.profile.throughput().large_per_min, self.profile.tier_per_min())
            allocation, self.tier = tiered.allocation, tiered.decision.tier
            self.decisions_log.append(
                MonitorDecision(
                    t_s=self.now,
                    request_rate=stats.request_rate,
                    hit_rate=stats.hit_rate,
                    k_mix={str(k): v for k, v in sorted(stats.k_mix.items())},
                    target_large=allocation.target,
                    large=allocation.large,
                    small=allocation.small,
                    feasible=allocation.feasible,
                    tier=tiered.decision.tier,
                    tier_shares=dict(tiered.decision.shares),
                )
            )
            self._reassign(allocation.large)
        else:
            self._window.take()  # a window not acted on starts over too
        self._sample_stats(window_k)

    def _sample_stats(self, window_k: Mapping[int, int]) -> None:
        """A stats sample: run totals, the current split and queues, and the k mix of the window just counted."""
        n_large = sum(role is ModelRole.LARGE for role in self.assigned)
        totals = self._totals.peek()
        self.stats.append(
            StatsSample(
                t_s=self.now,
                requests=totals.arrivals,
                hits=totals.hits,
                hit_rate=totals.hits / totals.decided if totals.decided else None,
                large=n_large,
                small=self.config.n_gpus - n_large,
                k_mix_json=json.dumps({str(k): v for k, v in sorted(window_k.items())}),
                queue_depths_json=json.dumps({role.value: len(q) for role, q in self.queues.items()}),
            )
        )


def simulate(
    config: SimConfig, workload: Workload, embeddings: np.ndarray | None = None, prefill: np.ndarray | None = None
) -> SimResult:
    """Build the hit model for `config` (warmed with `prefill` keys, if given) and run the simulation."""
    return Simulator(config, workload, build_hit_model(config, workload, embeddings, prefill)).run()
