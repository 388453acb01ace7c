"""The request pipeline: a validated request in, its images and decision out, with every backend injected.

    tenant -> validate -> count arrival -> retrieve (mode strategy) -> count decision -> route to a pool ->
    admission control -> render n images (retrying a lost replica once) -> count -> cache admission in background

Ray-free and written once: `modm demo` runs it with in-process services, the Serve Router with proxies over
deployment handles (deployments/router.py), the unit tests with fakes. Everything the router used to decide —
authentication, tenancy, limits, routing, admission control, retries, the monitor's window counts, the bound on
background admissions, timeouts — lives here.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from modm.config import SystemConfig, SystemMode
from modm.config.schema import TENANT_PATTERN, TENANT_RULE
from modm.constants import DEFAULT_TENANT
from modm.policy import PoolState, RetrievalDecision, WindowCounter, route
from modm.policy.api_keys import ApiKeyRing, AuthenticationError
from modm.policy.backpressure import PoolLoad, admit, seconds_to_drain
from modm.policy.requests import InvalidRequestError, check_dimensions, check_request_limits
from modm.policy.tenancy import cache_scope
from modm.roles import ModelRole
from modm.serving.backends import Backends
from modm.serving.calls import BackgroundWork, retry_if_replica_lost
from modm.serving.errors import (
    AuthenticationFailed,
    ModelFailed,
    NotFound,
    Overloaded,
    PermissionDenied,
    QueueFull,
    QueueRejected,
    RequestInvalid,
    RequestTimedOut,
)
from modm.serving.metrics import NoMetrics, ServingMetrics
from modm.serving.request import Decision, ImageRequest, Job, ServedImages
from modm.serving.strategies import Retrieved, strategy_for
from modm.serving.warm import warm_cache

logger = logging.getLogger(__name__)

__all__ = ["RequestPipeline"]


class RequestPipeline:
    def __init__(self, config: SystemConfig, backends: Backends, *, metrics: ServingMetrics | None = None):
        self.config, self.mode, self.backends = config, config.mode, backends
        self._check_backends()
        self.clock = backends.clock
        self.metrics = metrics or NoMetrics()
        self.api_keys = ApiKeyRing.from_config(config.auth)
        self.roles = tuple(backends.models)
        self.totals: Counter[str] = Counter()
        self.k_mix: Counter[int] = Counter()
        self.in_flight = dict.fromkeys(self.roles, 0)
        # Replicas per pool, as the monitor last said (a pool's one in-process instance counts as one).
        two_pools = ModelRole.SMALL in backends.models
        self.allocation = {
            ModelRole.LARGE: 1 if two_pools else config.monitor.gpu_budget,
            ModelRole.SMALL: 1 if two_pools else 0,
        }
        # The monitor's R, H and P(k), counted at arrival and decision (modm.policy.window), since the last report.
        self.window = WindowCounter()
        self.background = BackgroundWork(config.serving.max_pending_admissions, self.metrics.admission_dropped)
        # Seconds per request of each pool, for admission control: the config's profile, else measured by the
        # pool in the background (until then every request is admitted).
        specs = {ModelRole.LARGE: config.models.large, ModelRole.SMALL: config.models.small}
        self.latency_s = {role: specs[role].profiled_latency_s for role in self.roles}
        self.model_info: dict[ModelRole, dict] = {}
        self.strategy = strategy_for(self.mode)(config, backends, self._call, self.background, self.totals)
        self.warm_report = {"generated": 0, "already_cached": 0, "failed": 0}
        self._tasks: list[asyncio.Task] = []

    def _check_backends(self) -> None:
        needs = {
            SystemMode.VANILLA: (),
            SystemMode.NIRVANA: ("embedder", "cache"),
            SystemMode.MODM: ("embedder", "cache"),
        }[self.mode]
        missing = [name for name in needs if getattr(self.backends, name) is None]
        if ModelRole.LARGE not in self.backends.models:
            missing.append("models[large]")
        if self.mode is SystemMode.MODM and ModelRole.SMALL not in self.backends.models:
            missing.append("models[small]")
        if missing:
            raise ValueError(f"mode {self.mode.value!r} needs backends {missing}")

    # ---------------------------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Learn the pools' limits, start profiling and monitor reports, and run `cache.warm` before serving."""
        for role in self.roles:
            self.model_info[role] = await self.backends.models[role].info()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._profile_pools()))
        if self.backends.monitor is not None:
            self._tasks.append(loop.create_task(self._report_forever()))
        self.warm_report = await warm_cache(self.config, self.backends)

    async def close(self) -> None:
        """Stop the background loops and wait for pending cache admissions."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.background.drain()

    # ------------------------------------------------------------------------------------------------ requests
    def tenant(self, header: str | None, authorization: str | None) -> str:
        """With API keys the key names the tenant (X-Tenant-Id may only repeat it); without, the header does."""
        if self.api_keys is not None:
            tenant = self.authenticate(authorization)
            if header is not None and header != tenant:
                raise PermissionDenied("X-Tenant-Id names another tenant than the API key's")
            return tenant
        if header is None:
            return DEFAULT_TENANT
        if not TENANT_PATTERN.match(header):
            raise RequestInvalid(f"X-Tenant-Id must be {TENANT_RULE}")
        return header

    def authenticate(self, authorization: str | None) -> str | None:
        """The key's tenant; None when the API is open."""
        if self.api_keys is None:
            return None
        try:
            return self.api_keys.tenant_for(authorization)
        except AuthenticationError as err:
            raise AuthenticationFailed(str(err)) from None

    def validate(self, request: ImageRequest) -> Job:
        """The same limits the models enforce, checked before any work is sent; defaults resolved."""
        limits, info = self.config.limits, self.model_info[ModelRole.LARGE]
        if not 1 <= request.n <= limits.max_images:
            raise RequestInvalid(f"n={request.n} must be in [1, {limits.max_images}] images per request")
        steps = info["num_inference_steps"] if request.steps is None else request.steps
        width = info["default_size"] if request.width is None else request.width
        height = info["default_size"] if request.height is None else request.height
        seed = self.config.seed if request.seed is None else request.seed
        try:
            check_request_limits(request.prompt, steps, request.tenant, limits)
            for role, model in self.model_info.items():
                check_dimensions(
                    width, height, size_multiple=model["size_multiple"], max_size=model["max_size"], model=role.value
                )
            scope = cache_scope(request.tenant, self.config.tenancy.shared_pool_tenants)
        except (InvalidRequestError, ValueError) as err:
            raise RequestInvalid(str(err)) from None
        return Job(
            request_id=uuid.uuid4().hex,
            prompt=request.prompt,
            n=request.n,
            width=width,
            height=height,
            steps=steps,
            seed=seed,
            tenant=request.tenant,
            scope=scope,
        )

    async def generate(self, request: ImageRequest) -> ServedImages:
        """Serve one request; raises a `RequestRefused` (with its HTTP status) when it is not served."""
        job = self.validate(request)
        start = self.clock.monotonic()
        # R counts every valid request, also those later rejected, timed out or failed (malformed ones are no load).
        self.window.arrived()
        self.totals["arrivals"] += 1
        timeout_s = self.config.serving.request_timeout_s
        try:
            return await asyncio.wait_for(self._serve(job, start), timeout=timeout_s)
        except asyncio.TimeoutError:
            self.totals["errors"] += 1
            self.metrics.request_finished("none", "timeout", None, 0, None)
            raise RequestTimedOut(f"no answer within {timeout_s:.0f}s") from None

    async def _serve(self, job: Job, start: float) -> ServedImages:
        retrieved = await self._retrieve(job)
        decision = retrieved.decision
        self.window.decided(decision.hit, decision.k)  # H and P(k) at decision time, before generation
        role = self._route(decision)
        self._check_admission(role, decision)
        t0 = self.clock.monotonic()
        self._enter(role)
        try:
            images = await asyncio.gather(
                *[self.strategy.render(job, retrieved, role, job.seed + i) for i in range(job.n)]
            )
        except QueueFull as err:  # the pool's bounded queue (backpressure.max_queued_requests) is full
            self._reject(decision, role)
            raise QueueRejected(
                f"the {role.value} model is overloaded: {err}",
                retry_after_s=self._retry_after_s(role, err.retry_after_s),
            ) from None
        except Exception as err:
            self.totals["errors"] += 1
            self.metrics.request_finished(_decision_label(decision), "error", role.value, decision.k, None)
            logger.exception("request %s failed on the %s model", job.request_id, role.value)
            raise ModelFailed(f"the {role.value} model failed: {type(err).__name__}") from None
        finally:
            self._leave(role)
        job.timings_s["generate"] = self.clock.monotonic() - t0
        for png in images:
            self.strategy.admit(job, retrieved, role, png)
        self._count(decision, role, self.clock.monotonic() - start)
        return ServedImages(
            images=list(images),
            decision=Decision(
                request_id=job.request_id,
                mode=self.mode.value,
                hit=decision.hit,
                score=decision.score,
                k=decision.k,
                strength=decision.strength,
                model=role,
                timings_s=job.timings_s,
                entry_id=self.strategy.entry_id(retrieved),
            ),
            created=int(self.clock.wall()),
        )

    async def _retrieve(self, job: Job) -> Retrieved:
        if self.mode is SystemMode.VANILLA:
            return await self.strategy.retrieve(job)
        t0 = self.clock.monotonic()
        try:
            retrieved = await self.strategy.retrieve(job)
        except Exception:  # a lost embedder or cache replica costs the cache, not the request
            logger.exception("request %s: retrieval failed; serving it as a miss", job.request_id)
            self.metrics.retrieval_failed()
            retrieved = self.strategy.miss(job)
        self.metrics.retrieval_overhead(self.clock.monotonic() - t0)
        return retrieved

    def _route(self, decision: RetrievalDecision) -> ModelRole:
        if ModelRole.SMALL not in self.backends.models:
            return ModelRole.LARGE
        return route(
            decision.hit, self.config.monitor.mode, self._pool_state(ModelRole.LARGE), self._pool_state(ModelRole.SMALL)
        )

    async def _call(self, call: Callable[[], Awaitable[Any]], what: str) -> Any:
        return await retry_if_replica_lost(call, what, on_retry=self._count_retry)

    def _count_retry(self) -> None:
        self.totals["retries"] += 1

    # ------------------------------------------------------------------------------------------ load and counts
    def _pool_state(self, role: ModelRole) -> PoolState:
        return PoolState(replicas=self.allocation[role], in_flight=self.in_flight[role])

    def _pool_load(self, role: ModelRole) -> PoolLoad | None:
        latency = self.latency_s[role]
        if latency is None:
            return None
        return PoolLoad(in_flight=self.in_flight[role], replicas=max(1, self.allocation[role]), latency_s=latency)

    def _check_admission(self, role: ModelRole, decision: RetrievalDecision) -> None:
        """429 + Retry-After when this request would be answered later than the bound (SLO or timeout)."""
        backpressure, load = self.config.backpressure, self._pool_load(role)
        if not backpressure.admission_control or load is None:
            return
        bound_s = backpressure.max_expected_latency_s or self.config.serving.request_timeout_s
        verdict = admit(load, bound_s)
        if not verdict.admitted:
            self._reject(decision, role)
            raise Overloaded(
                f"the {role.value} model is busy: this request would take about {verdict.expected_latency_s:.1f}s, "
                f"over the {bound_s:g}s bound; retry in {verdict.retry_after_s}s",
                retry_after_s=verdict.retry_after_s,
            )

    def _retry_after_s(self, role: ModelRole, suggested_s: float | None) -> int:
        if suggested_s is not None:
            return max(1, round(suggested_s))
        load = self._pool_load(role)
        return 1 if load is None else seconds_to_drain(load, 1)

    def _reject(self, decision: RetrievalDecision, role: ModelRole) -> None:
        self.totals["rejected"] += 1
        self.metrics.request_finished(_decision_label(decision), "rejected", role.value, decision.k, None)

    def _enter(self, role: ModelRole) -> None:
        self.in_flight[role] += 1
        self.metrics.in_flight(role.value, self.in_flight[role])

    def _leave(self, role: ModelRole) -> None:
        self.in_flight[role] -= 1
        self.metrics.in_flight(role.value, self.in_flight[role])

    def _count(self, decision: RetrievalDecision, role: ModelRole, seconds: float) -> None:
        self.totals["requests"] += 1
        self.totals["hits" if decision.hit else "misses"] += 1
        self.totals[f"served_{role.value}"] += 1
        if decision.hit:
            self.k_mix[decision.k] += 1
        self.metrics.request_finished(_decision_label(decision), "ok", role.value, decision.k, seconds)

    # ------------------------------------------------------------------------------------------ other endpoints
    async def stats(self) -> dict:
        requests = self.totals["requests"]
        out = {
            "mode": self.mode.value,
            "requests": requests,
            "hits": self.totals["hits"],
            "misses": self.totals["misses"],
            "errors": self.totals["errors"],
            "hit_rate": self.totals["hits"] / requests if requests else 0.0,
            "rejected": self.totals["rejected"],
            "arrivals": self.totals["arrivals"],
            "retries": self.totals["retries"],
            "evicted_before_fetch": self.totals["evicted_before_fetch"],
            "k_mix": {str(k): n for k, n in sorted(self.k_mix.items())},
            "served_by": {role.value: self.totals[f"served_{role.value}"] for role in ModelRole},
            "queue_depths": {role.value: self.in_flight.get(role, 0) for role in ModelRole},
            "allocation": {role.value: n for role, n in self.allocation.items()},
            "pending_admissions": len(self.background),
            "warm": self.warm_report,
        }
        if self.backends.cache is not None:
            out["cache"] = await self.backends.cache.stats()
        return out

    async def cached_image(self, entry_id: int, tenant: str) -> bytes:
        """The PNG of a cached image (e.g. the one a hit was refined from), for the tenants that may retrieve it."""
        if self.mode is not SystemMode.MODM:
            raise NotFound(f"the {self.mode.value} mode caches no images")
        scope = cache_scope(tenant, self.config.tenancy.shared_pool_tenants)
        png = await self.backends.cache.png_in_scope(entry_id, list(scope.read))
        if png is None:  # unknown, evicted, or another tenant's: the same answer, so ids leak nothing
            raise NotFound(f"no cached image {entry_id} for this tenant")
        return png

    async def drain_admissions(self) -> int:
        """Wait for background admissions (tests and graceful shutdown); returns how many were pending."""
        return await self.background.drain()

    # ---------------------------------------------------------------------------------------------- background
    async def report_window(self) -> None:
        """Send the counts since the last report to the monitor and take its allocation."""
        monitor = self.backends.monitor
        await monitor.report(self.window.take().as_dict())
        allocation = await monitor.get_allocation()
        self.allocation = {ModelRole.LARGE: allocation["large"], ModelRole.SMALL: allocation["small"]}

    async def _report_forever(self) -> None:
        while True:
            await self.clock.sleep(self.config.serving.stats_report_interval_s)
            try:
                await self.report_window()
            except Exception:
                logger.exception("monitor report failed")

    async def _profile_pools(self) -> None:
        for role in self.roles:
            if self.latency_s[role] is not None:
                continue
            try:
                self.latency_s[role] = await self.backends.models[role].profile()
            except Exception:
                logger.exception("profiling the %s model failed; its requests skip admission control", role.value)


def _decision_label(decision: RetrievalDecision) -> str:
    return "hit" if decision.hit else "miss"
