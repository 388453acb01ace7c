"""Router: the HTTP ingress. Loads no model; decides hit/miss and k with the pure policy, picks the model pool from
live queue depths, calls the other deployments with bytes and numbers, and admits results to the cache in the
background without delaying the response."""

import asyncio
import base64
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from fastapi import Header, Response
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError
from ray.serve.handle import DeploymentResponse

from deployments.api import DecisionInfo, GenerationBody, GenerationResponse, ImageData
from deployments.ingress import RequestRejected, api
from deployments.metrics import RouterMetrics
from deployments.warm import warm_before_serving
from modm.config import SystemConfig, SystemMode
from modm.config.schema import TENANT_PATTERN, TENANT_RULE
from modm.constants import DEFAULT_TENANT
from modm.policy import KTable, PoolState, RetrievalDecision, WindowCounter, route, should_admit
from modm.roles import ModelRole
from modm.policy.api_keys import ApiKeyRing, AuthenticationError
from modm.policy.backpressure import PoolLoad, admit, seconds_to_drain
from modm.policy.requests import InvalidRequestError, check_dimensions, check_request_limits
from modm.policy.tenancy import cache_scope

logger = logging.getLogger("ray.serve")


async def _cancelling_on_exit(response: DeploymentResponse) -> Any:
    """Await a handle call; if this request is cancelled meanwhile (our own timeout, or the client went away),
    cancel the call too, so the model replica stops instead of finishing an image nobody will receive."""
    try:
        return await response
    except asyncio.CancelledError:
        response.cancel()
        raise


# Decorated here, not in the builder: serve.ingress rewrites `api`'s routes, and every replica re-imports this module
# (the app object is not pickled by value), so the rewrite must happen at import time.
@serve.ingress(api)
class Router:
    async def __init__(self, system: dict, large, small=None, embedder=None, cache=None, monitor=None):
        self.config = SystemConfig.model_validate(system)
        self.mode = self.config.mode
        self.large, self.small, self.embedder, self.cache, self.monitor = large, small, embedder, cache, monitor
        self.k_table = KTable.from_config(self.config.policy)  # NIRVANA's lookups happen in its LatentCache
        self.api_keys = ApiKeyRing.from_config(self.config.auth)
        api.state.max_body_bytes = self.config.limits.max_body_bytes  # one Router per replica process
        self.metrics = RouterMetrics(self.mode.value)
        self.model_info = {ModelRole.LARGE: await large.info.remote()}
        if small is not None:
            self.model_info[ModelRole.SMALL] = await small.info.remote()
        self.in_flight = {ModelRole.LARGE: 0, ModelRole.SMALL: 0}
        self.allocation = {
            "large": self.config.monitor.gpu_budget if small is None else 1,
            "small": 0 if small is None else 1,
        }
        self.totals: Counter[str] = Counter()
        self.k_mix: Counter[int] = Counter()
        # The monitor's R, H and P(k), counted at arrival and decision (modm.policy.window), since the last report.
        self._unreported = WindowCounter()
        self._admissions: set[asyncio.Task] = set()
        self._reporter = asyncio.get_running_loop().create_task(self._report_loop())
        # Seconds per request of each pool, for admission control: the config's profile, else measured by the
        # replica in the background (until then every request is admitted).
        self.latency_s: dict[ModelRole, float | None] = {
            ModelRole.LARGE: self.config.models.large.profiled_latency_s,
            ModelRole.SMALL: None,
        }
        if small is not None:
            self.latency_s[ModelRole.SMALL] = self.config.models.small.profiled_latency_s
        self._profiler = asyncio.get_running_loop().create_task(self._profile_pools())
        # cache.warm: fill the cache before this router serves (the app is not RUNNING until it is done).
        self.warm_report = await warm_before_serving(self.config, large, embedder, cache)

    # ------------------------------------------------------------------------------------------------ HTTP
    @api.post("/v1/images/generations", response_model=GenerationResponse)
    async def generations(
        self,
        body: GenerationBody,
        x_tenant_id: str | None = Header(default=None),
        authorization: str | None = Header(default=None),
    ):
        tenant = self._tenant(x_tenant_id, authorization)
        width, height, steps = self._check(body, tenant)
        start = time.perf_counter()
        # R counts every valid request, also those later rejected, timed out or failed (malformed ones are no load).
        self._unreported.arrived()
        self.totals["arrivals"] += 1
        try:
            return await asyncio.wait_for(
                self._serve(body, tenant, width, height, steps, start), timeout=self.config.serving.request_timeout_s
            )
        except asyncio.TimeoutError:
            self.totals["errors"] += 1
            self.metrics.record("none", "timeout", None, 0, None)
            raise RequestRejected(
                504, f"no answer within {self.config.serving.request_timeout_s:.0f}s", "timeout"
            ) from None

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "mode": self.mode.value}

    @api.get("/v1/stats")
    async def stats(self, authorization: str | None = Header(default=None)) -> dict:
        if self.api_keys is not None:
            self._authenticate(authorization)
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
            "k_mix": {str(k): n for k, n in sorted(self.k_mix.items())},
            "served_by": {"large": self.totals["served_large"], "small": self.totals["served_small"]},
            "queue_depths": {pool.value: n for pool, n in self.in_flight.items()},
            "allocation": self.allocation,
            "pending_admissions": len(self._admissions),
            "warm": self.warm_report,
        }
        if self.cache is not None:
            out["cache"] = await self.cache.stats.remote()
        return out

    @api.get("/v1/cache/{entry_id}")
    async def cached_image(
        self,
        entry_id: int,
        x_tenant_id: str | None = Header(default=None),
        authorization: str | None = Header(default=None),
    ) -> Response:
        """The PNG of a cached image (e.g. the one a hit was refined from), for the tenants that may retrieve it."""
        tenant = self._tenant(x_tenant_id, authorization)
        if self.mode is not SystemMode.MODM:
            raise RequestRejected(404, f"the {self.mode.value} mode caches no images", "not_found")
        scope = cache_scope(tenant, self.config.tenancy.shared_pool_tenants)
        png = await self.cache.png_in_scope.remote(entry_id, list(scope.read))
        if png is None:  # unknown, evicted, or another tenant's: the same answer, so ids leak nothing
            raise RequestRejected(404, f"no cached image {entry_id} for this tenant", "not_found")
        return Response(content=png, media_type="image/png")

    # ---------------------------------------------------------------------------------------------- serving
    def _tenant(self, header: str | None, authorization: str | None) -> str:
        """With API keys the key names the tenant (X-Tenant-Id may only repeat it); without, the header does."""
        if self.api_keys is not None:
            tenant = self._authenticate(authorization)
            if header is not None and header != tenant:
                raise RequestRejected(403, "X-Tenant-Id names another tenant than the API key's", "permission_error")
            return tenant
        if header is None:
            return DEFAULT_TENANT
        if not TENANT_PATTERN.match(header):
            raise RequestRejected(400, f"X-Tenant-Id must be {TENANT_RULE}")
        return header

    def _authenticate(self, authorization: str | None) -> str:
        try:
            return self.api_keys.tenant_for(authorization)
        except AuthenticationError as err:
            raise RequestRejected(
                401, str(err), "authentication_error", headers={"WWW-Authenticate": 'Bearer realm="modm"'}
            ) from None

    def _check(self, body: GenerationBody, tenant: str) -> tuple[int, int, int]:
        """The same limits the models enforce, checked here before any work is sent."""
        limits, info = self.config.limits, self.model_info[ModelRole.LARGE]
        if body.n > limits.max_images:
            raise RequestRejected(400, f"n={body.n} exceeds the limit of {limits.max_images} images per request")
        steps = body.steps or info["num_inference_steps"]
        width, height = body.dimensions() or (info["default_size"], info["default_size"])
        try:
            check_request_limits(body.prompt, steps, tenant, limits)
            for pool, model in self.model_info.items():
                check_dimensions(
                    width, height, size_multiple=model["size_multiple"], max_size=model["max_size"], model=pool.value
                )
        except InvalidRequestError as err:
            raise RequestRejected(400, str(err)) from None
        return width, height, steps

    async def _serve(
        self, body: GenerationBody, tenant: str, width: int, height: int, steps: int, start: float
    ) -> GenerationResponse:
        request_id = uuid.uuid4().hex
        timings: dict[str, float] = {}
        scope = cache_scope(tenant, self.config.tenancy.shared_pool_tenants)
        decision, match = RetrievalDecision.miss(), None
        if self.mode is not SystemMode.VANILLA:
            t0 = time.perf_counter()
            try:
                decision, match = await (
                    self._retrieve(body.prompt, scope.read, timings)
                    if self.mode is SystemMode.MODM
                    else self._retrieve_latents(body, tenant, width, height, steps)
                )
            except Exception:  # a lost Embedder/CacheIndex replica costs the cache, not the request
                logger.exception("request %s: retrieval failed; serving it as a miss", request_id)
                self.metrics.retrieval_failures.inc(tags={"mode": self.mode.value})
                decision, match = RetrievalDecision.miss(), None
            self.metrics.overhead.observe(time.perf_counter() - t0, tags={"mode": self.mode.value})
        self._unreported.decided(decision.hit, decision.k)  # H and P(k) at decision time, before generation
        pool = (
            route(
                decision.hit,
                self.config.monitor.mode,
                self._pool_state(ModelRole.LARGE),
                self._pool_state(ModelRole.SMALL),
            )
            if self.small is not None
            else ModelRole.LARGE
        )
        self._check_admission(pool, decision)
        seed = self.config.seed if body.seed is None else body.seed
        t2 = time.perf_counter()
        self._enter(pool)
        try:
            images = await asyncio.gather(
                *[
                    self._one_image(pool, decision, match, body.prompt, width, height, steps, seed + i)
                    for i in range(body.n)
                ]
            )
        except BackPressureError as err:
            # Serve's bounded queue at our handle of the pool is full (backpressure.max_queued_requests).
            self._reject(decision, pool)
            raise RequestRejected(
                503,
                f"the {pool.value} model is overloaded: {err}",
                "overloaded",
                headers={"Retry-After": str(self._retry_after_s(pool, err.retry_after_s))},
            ) from None
        except Exception as err:
            self.totals["errors"] += 1
            self.metrics.record("hit" if decision.hit else "miss", "error", pool.value, decision.k, None)
            logger.exception("request %s failed on the %s model", request_id, pool.value)
            raise RequestRejected(503, f"the {pool.value} model failed: {type(err).__name__}", "server_error") from None
        finally:
            self._leave(pool)
        timings["generate"] = time.perf_counter() - t2
        for png in images:
            self._admit(png, body.prompt, scope.write, pool, decision)
        self._count(decision, pool, time.perf_counter() - start)
        return GenerationResponse(
            created=int(time.time()),
            data=[ImageData(b64_json=base64.b64encode(png).decode("ascii")) for png in images],
            modm=DecisionInfo(
                request_id=request_id,
                mode=self.mode.value,
                hit=decision.hit,
                score=decision.score,
                k=decision.k,
                strength=decision.strength,
                model=pool.value,
                timings_s=timings,
                entry_id=match["entry_id"] if decision.hit and self.mode is SystemMode.MODM else None,
            ),
        )

    async def _retrieve(self, prompt: str, namespaces, timings: dict) -> tuple[RetrievalDecision, dict | None]:
        """MoDM: the prompt's embedding against the cached images of the namespaces it may read."""
        t0 = time.perf_counter()
        query = await self.embedder.embed_text.remote(prompt)
        timings["embed"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        match = await self.cache.query.remote(query, list(namespaces))
        decision = self.k_table.decide(None if match is None else match["score"])
        if decision.hit:
            # The entry may be evicted between the query and this fetch (FIFO at capacity): then it is a miss.
            match["png"] = await self._call_retrying(lambda: self.cache.fetch_png.remote(match["entry_id"]), "cache")
            if match["png"] is None:
                logger.info(
                    "cache entry %s was evicted before its image was fetched; serving a miss", match["entry_id"]
                )
                self.totals["evicted_before_fetch"] += 1
                decision = RetrievalDecision.miss(decision.score)
        timings["retrieve"] = time.perf_counter() - t1
        return decision, match

    async def _retrieve_latents(
        self, body: GenerationBody, tenant: str, width: int, height: int, steps: int
    ) -> tuple[RetrievalDecision, dict]:
        """NIRVANA: the prompt's embedding against cached prompts; a hit brings the latents to resume from."""
        query = await self.embedder.embed_text.remote(body.prompt)
        namespace = f"{tenant}/{width}x{height}/{steps}"  # latents resume only a run of the same shape
        match = {"query": query, "namespace": namespace, "cacheable": steps == self.config.policy.total_steps}
        if not match["cacheable"] or body.n > 1:  # n > 1 would resume n copies of one cached run
            return RetrievalDecision.miss(), match
        found = await self.cache.lookup.remote(query, namespace)
        match["latents"] = found.get("latents")
        if not found["hit"]:
            return RetrievalDecision.miss(found["score"]), match
        return RetrievalDecision(hit=True, k=found["k"], strength=1.0 - found["k"] / steps, score=found["score"]), match

    async def _one_image(
        self,
        pool: ModelRole,
        decision: RetrievalDecision,
        match: dict | None,
        prompt: str,
        width: int,
        height: int,
        steps: int,
        seed: int,
    ) -> bytes:
        handle = self.large if pool is ModelRole.LARGE else self.small
        if self.mode is SystemMode.NIRVANA:
            return await self._nirvana_image(decision, match, prompt, width, height, steps, seed)
        if not decision.hit:
            return await self._call_retrying(
                lambda: handle.generate.remote(prompt, width, height, steps, seed), f"{pool.value} model"
            )
        return await self._call_retrying(
            lambda: handle.refine.remote(prompt, match["png"], decision.strength, width, height, steps, seed),
            f"{pool.value} model",
        )

    async def _call_retrying(self, call: Callable[[], DeploymentResponse], what: str) -> Any:
        """`_retry_if_replica_lost`, counting each retry in /v1/stats (`retries`)."""
        return await self._retry_if_replica_lost(call, what, on_retry=self._count_retry)

    def _count_retry(self) -> None:
        self.totals["retries"] += 1

    @staticmethod
    async def _retry_if_replica_lost(
        call: Callable[[], DeploymentResponse], what: str, on_retry: Callable[[], None] | None = None
    ) -> Any:
        """Await `call()`; if the replica that took it died or became unreachable, call once more.

        Every call made through this is idempotent (generation is deterministic given the seed; reading a cached
        image has no side effect), and Serve routes the second attempt to another replica (or holds it until the
        replacement is up), so a replica death costs latency, not the request. Only the loss of the replica itself
        is retried: a `RayTaskError` means the replica answered with an error (even one it got from its own
        workers), which a retry would only repeat.
        """
        try:
            return await _cancelling_on_exit(call())
        except (RayActorError, ReplicaUnavailableError) as err:  # ActorDiedError, ActorUnavailableError
            if isinstance(err, RayTaskError):
                raise
            logger.warning("a %s replica was lost mid-request (%s); retrying once", what, type(err).__name__)
        if on_retry is not None:
            on_retry()
        return await _cancelling_on_exit(call())

    async def _nirvana_image(
        self,
        decision: RetrievalDecision,
        match: dict | None,
        prompt: str,
        width: int,
        height: int,
        steps: int,
        seed: int,
    ) -> bytes:
        """NIRVANA: a hit resumes the large model from cached latents; a miss runs it fully and caches its
        latents after steps 5..25 (in the background)."""
        if decision.hit:
            return await self._call_retrying(
                lambda: self.large.resume.remote(prompt, match["latents"], decision.k, width, height, steps, seed),
                "large model",
            )
        if match is None or not match["cacheable"]:  # no cache key (retrieval failed) or another shape
            return await self._call_retrying(
                lambda: self.large.generate.remote(prompt, width, height, steps, seed), "large model"
            )
        png, latents = await self._call_retrying(
            lambda: self.large.generate_with_snapshots.remote(prompt, width, height, steps, seed), "large model"
        )
        self._in_background(self._admit_latents(match["query"], match["namespace"], latents))
        return png

    async def _admit_latents(self, query, namespace: str, latents: dict) -> None:
        try:
            await self.cache.add.remote(query, namespace, latents)
        except Exception:
            logger.exception("latent cache admission failed (the response was already sent)")

    def _pool_load(self, pool: ModelRole) -> PoolLoad | None:
        latency = self.latency_s[pool]
        return (
            None
            if latency is None
            else PoolLoad(
                in_flight=self.in_flight[pool], replicas=max(1, self.allocation[pool.value]), latency_s=latency
            )
        )

    def _check_admission(self, pool: ModelRole, decision: RetrievalDecision) -> None:
        """429 + Retry-After when this request would be answered later than the bound (SLO or timeout)."""
        backpressure, load = self.config.backpressure, self._pool_load(pool)
        if not backpressure.admission_control or load is None:
            return
        bound_s = backpressure.max_expected_latency_s or self.config.serving.request_timeout_s
        verdict = admit(load, bound_s)
        if not verdict.admitted:
            self._reject(decision, pool)
            raise RequestRejected(
                429,
                f"the {pool.value} model is busy: this request would take about {verdict.expected_latency_s:.1f}"
                f"s, over the {bound_s:g}s bound; retry in {verdict.retry_after_s}s",
                "overloaded",
                headers={"Retry-After": str(verdict.retry_after_s)},
            )

    def _retry_after_s(self, pool: ModelRole, suggested_s: float | None) -> int:
        if suggested_s is not None:
            return max(1, round(suggested_s))
        load = self._pool_load(pool)
        return 1 if load is None else seconds_to_drain(load, 1)

    def _reject(self, decision: RetrievalDecision, pool: ModelRole) -> None:
        self.totals["rejected"] += 1
        self.metrics.record("hit" if decision.hit else "miss", "rejected", pool.value, decision.k, None)

    async def _profile_pools(self) -> None:
        handles = {ModelRole.LARGE: self.large, ModelRole.SMALL: self.small}
        for pool, handle in handles.items():
            if handle is None or self.latency_s[pool] is not None:
                continue
            try:
                self.latency_s[pool] = await handle.profile.remote()
            except Exception:
                logger.exception(
                    "router: profiling the %s model failed; its requests skip admission control", pool.value
                )

    def _pool_state(self, pool: ModelRole) -> PoolState:
        return PoolState(replicas=self.allocation[pool.value], in_flight=self.in_flight[pool])

    def _enter(self, pool: ModelRole) -> None:
        self.in_flight[pool] += 1
        self.metrics.set_in_flight(pool.value, self.in_flight[pool])

    def _leave(self, pool: ModelRole) -> None:
        self.in_flight[pool] -= 1
        self.metrics.set_in_flight(pool.value, self.in_flight[pool])

    def _count(self, decision: RetrievalDecision, pool: ModelRole, seconds: float) -> None:
        self.totals["requests"] += 1
        self.totals["hits" if decision.hit else "misses"] += 1
        self.totals[f"served_{pool.value}"] += 1
        if decision.hit:
            self.k_mix[decision.k] += 1
        self.metrics.record("hit" if decision.hit else "miss", "ok", pool.value, decision.k, seconds)

    # -------------------------------------------------------------------------------------------- background
    def _admit(self, png: bytes, prompt: str, namespace: str, pool: ModelRole, decision: RetrievalDecision) -> None:
        if self.mode is not SystemMode.MODM or not should_admit(
            self.config.cache.admission, from_large_model=pool is ModelRole.LARGE, refined=decision.hit
        ):
            return
        self._in_background(self._admit_one(png, prompt, namespace, pool, decision.k))

    def _in_background(self, admission) -> None:
        """Run a cache admission after the response; beyond the bound it is dropped, never queued."""
        if len(self._admissions) >= self.config.serving.max_pending_admissions:
            self.metrics.admissions_dropped.inc(tags={"mode": self.mode.value})
            admission.close()
            return
        task = asyncio.get_running_loop().create_task(admission)
        self._admissions.add(task)
        task.add_done_callback(self._admissions.discard)

    async def _admit_one(self, png: bytes, prompt: str, namespace: str, pool: ModelRole, k: int) -> None:
        try:
            key = await self.embedder.embed_for_cache.remote(png, prompt)
            await self.cache.add.remote(png, key, prompt, namespace, pool.value, k)
        except Exception:
            logger.exception("cache admission failed (the response was already sent)")

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.serving.stats_report_interval_s)
            if self.monitor is None:
                continue
            try:
                await self.monitor.report.remote(self._unreported.take().as_dict())
                allocation = await self.monitor.get_allocation.remote()
                self.allocation = {"large": allocation["large"], "small": allocation["small"]}
            except Exception:
                logger.exception("router: monitor report failed")

    async def drain_admissions(self) -> int:
        """Wait for background admissions (tests and graceful shutdown); returns how many were pending."""
        pending = list(self._admissions)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        return len(pending)
