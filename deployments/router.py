"""Router: the HTTP ingress. Loads no model; decides hit/miss and k with the pure policy, picks the model pool from
live queue depths, calls the other deployments with bytes and numbers, and admits results to the cache in the
background without delaying the response."""


import asyncio
import base64
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import ReplicaUnavailableError
from ray.serve.handle import DeploymentResponse

from deployments.api import DecisionInfo, GenerationBody, GenerationResponse, ImageData, error_body
from deployments.metrics import RouterMetrics
from modm.config import SystemConfig, SystemMode
from modm.constants import DEFAULT_TENANT
from modm.policy import KTable, Pool, PoolState, RetrievalDecision, route, should_admit
from modm.policy.requests import InvalidRequestError, check_dimensions, check_request_limits

logger = logging.getLogger("ray.serve")

TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

api = FastAPI(title="modm", version="0.1.0",
              description="Text-to-image serving with a mixture of diffusion models and a cache of final images.")


class RequestRejected(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


@api.exception_handler(RequestValidationError)
async def _invalid_body(request: Request, err: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
                         for e in err.errors())
    return JSONResponse(status_code=422, content=error_body(problems, "invalid_request_error"))


@api.exception_handler(RequestRejected)
async def _rejected(request: Request, err: RequestRejected) -> JSONResponse:
    return JSONResponse(status_code=err.status, content=error_body(err.message, err.kind))


# Decorated here, not in the builder: serve.ingress rewrites `api`'s routes, and every replica re-imports this module
# (the app object is not pickled by value), so the rewrite must happen at import time.
@serve.ingress(api)
class Router:
    async def __init__(self, system: dict, large, small=None, embedder=None, cache=None, monitor=None):
        self.config = SystemConfig.model_validate(system)
        self.mode = self.config.mode
        self.large, self.small, self.embedder, self.cache, self.monitor = large, small, embedder, cache, monitor
        self.k_table = (KTable.nirvana(self.config.policy.total_steps) if self.mode is SystemMode.NIRVANA
                        else KTable.from_config(self.config.policy))
        self.metrics = RouterMetrics(self.mode.value)
        self.model_info = {Pool.LARGE: await large.info.remote()}
        if small is not None:
            self.model_info[Pool.SMALL] = await small.info.remote()
        self.in_flight = {Pool.LARGE: 0, Pool.SMALL: 0}
        self.allocation = {"large": self.config.monitor.gpu_budget if small is None else 1,
                           "small": 0 if small is None else 1}
        self.totals: Counter[str] = Counter()
        self.k_mix: Counter[int] = Counter()
        self._unreported = {"requests": 0, "hits": 0, "k": Counter()}
        self._admissions: set[asyncio.Task] = set()
        self._reporter = asyncio.get_running_loop().create_task(self._report_loop())

    # ------------------------------------------------------------------------------------------------ HTTP
    @api.post("/v1/images/generations", response_model=GenerationResponse)
    async def generations(self, body: GenerationBody, x_tenant_id: str | None = Header(default=None)):
        tenant = self._tenant(x_tenant_id)
        width, height, steps = self._check(body, tenant)
        start = time.perf_counter()
        try:
            return await asyncio.wait_for(self._serve(body, tenant, width, height, steps, start),
                                          timeout=self.config.serving.request_timeout_s)
        except asyncio.TimeoutError:
            self.totals["errors"] += 1
            self.metrics.record("none", "timeout", None, 0, None)
            raise RequestRejected(504, f"no answer within {self.config.serving.request_timeout_s:.0f}s",
                                  "timeout") from None

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "mode": self.mode.value}

    @api.get("/v1/stats")
    async def stats(self) -> dict:
        requests = self.totals["requests"]
        out = {
            "mode": self.mode.value,
            "requests": requests, "hits": self.totals["hits"], "misses": self.totals["misses"],
            "errors": self.totals["errors"], "hit_rate": self.totals["hits"] / requests if requests else 0.0,
            "k_mix": {str(k): n for k, n in sorted(self.k_mix.items())},
            "served_by": {"large": self.totals["served_large"], "small": self.totals["served_small"]},
            "queue_depths": {pool.value: n for pool, n in self.in_flight.items()},
            "allocation": self.allocation,
            "pending_admissions": len(self._admissions),
        }
        if self.cache is not None:
            out["cache"] = await self.cache.stats.remote()
        return out

    # ---------------------------------------------------------------------------------------------- serving
    def _tenant(self, header: str | None) -> str:
        if header is None:
            return DEFAULT_TENANT
        if not TENANT_PATTERN.match(header):
            raise RequestRejected(400, "X-Tenant-Id must be 1-64 characters of letters, digits, '.', '_' or '-' "
                                       "starting with a letter or digit")
        return header

    def _check(self, body: GenerationBody, tenant: str) -> tuple[int, int, int]:
        """The same limits the models enforce, checked here before any work is sent."""
        limits, info = self.config.limits, self.model_info[Pool.LARGE]
        if body.n > limits.max_images:
            raise RequestRejected(400, f"n={body.n} exceeds the limit of {limits.max_images} images per request")
        steps = body.steps or info["num_inference_steps"]
        width, height = body.dimensions() or (info["default_size"], info["default_size"])
        try:
            check_request_limits(body.prompt, steps, tenant, limits)
            for pool, model in self.model_info.items():
                check_dimensions(width, height, size_multiple=model["size_multiple"], max_size=model["max_size"],
                                 model=pool.value)
        except InvalidRequestError as err:
            raise RequestRejected(400, str(err)) from None
        return width, height, steps

    async def _serve(self, body: GenerationBody, tenant: str, width: int, height: int, steps: int,
                     start: float) -> GenerationResponse:
        request_id = uuid.uuid4().hex
        timings: dict[str, float] = {}
        decision, match = RetrievalDecision.miss(), None
        if self.mode is SystemMode.MODM:
            t0 = time.perf_counter()
            query = await self.embedder.embed_text.remote(body.prompt)
            timings["embed"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            match = await self.cache.query.remote(query, [tenant])
            timings["retrieve"] = time.perf_counter() - t1
            decision = self.k_table.decide(None if match is None else match["score"])
            self.metrics.overhead.observe(time.perf_counter() - t0, tags={"mode": self.mode.value})
        elif self.mode is SystemMode.NIRVANA:
            t0 = time.perf_counter()
            query = await self.embedder.embed_text.remote(body.prompt)
            namespace = f"{tenant}/{width}x{height}/{steps}"  # latents resume only a run of the same shape
            match = {"query": query, "namespace": namespace, "cacheable": steps == self.k_table.total_steps}
            if match["cacheable"] and body.n == 1:  # n > 1 would resume n copies of one cached run
                found = await self.cache.lookup.remote(query, namespace)
                match["latents"] = found.get("latents")
                decision = (RetrievalDecision(hit=True, k=found["k"], strength=1.0 - found["k"] / steps,
                                              score=found["score"])
                            if found["hit"] else RetrievalDecision.miss(found["score"]))
            timings["embed_retrieve"] = time.perf_counter() - t0
            self.metrics.overhead.observe(time.perf_counter() - t0, tags={"mode": self.mode.value})
        pool = route(decision.hit, self.config.monitor.mode, self._pool_state(Pool.LARGE),
                     self._pool_state(Pool.SMALL)) if self.small is not None else Pool.LARGE
        seed = self.config.seed if body.seed is None else body.seed
        t2 = time.perf_counter()
        self._enter(pool)
        try:
            images = await asyncio.gather(*[
                self._one_image(pool, decision, match, body.prompt, width, height, steps, seed + i)
                for i in range(body.n)])
        except Exception as err:
            self.totals["errors"] += 1
            self.metrics.record("hit" if decision.hit else "miss", "error", pool.value, decision.k, None)
            logger.exception("request %s failed on the %s model", request_id, pool.value)
            raise RequestRejected(503, f"the {pool.value} model failed: {type(err).__name__}",
                                  "server_error") from None
        finally:
            self._leave(pool)
        timings["generate"] = time.perf_counter() - t2
        for png in images:
            self._admit(png, body.prompt, tenant, pool, decision)
        self._count(decision, pool, time.perf_counter() - start)
        return GenerationResponse(
            created=int(time.time()),
            data=[ImageData(b64_json=base64.b64encode(png).decode("ascii")) for png in images],
            modm=DecisionInfo(request_id=request_id, mode=self.mode.value, hit=decision.hit, score=decision.score,
                              k=decision.k, strength=decision.strength, model=pool.value, timings_s=timings))

    async def _one_image(self, pool: Pool, decision: RetrievalDecision, match: dict | None, prompt: str,
                         width: int, height: int, steps: int, seed: int) -> bytes:
        handle = self.large if pool is Pool.LARGE else self.small
        if self.mode is SystemMode.NIRVANA:
            return await self._nirvana_image(decision, match, prompt, width, height, steps, seed)
        if not decision.hit:
            return await self._retry_if_replica_lost(
                lambda: handle.generate.remote(prompt, width, height, steps, seed), f"{pool.value} model")
        cached = await self._retry_if_replica_lost(lambda: self.cache.get_png.remote(match["entry_id"]), "cache")
        return await self._retry_if_replica_lost(
            lambda: handle.refine.remote(prompt, cached, decision.strength, width, height, steps, seed),
            f"{pool.value} model")

    @staticmethod
    async def _retry_if_replica_lost(call: Callable[[], DeploymentResponse], what: str) -> Any:
        """Await `call()`; if the replica that took it died or became unreachable, call once more.

        Every call made through this is idempotent (generation is deterministic given the seed; reading a cached
        image has no side effect), and Serve routes the second attempt to another replica (or holds it until the
        replacement is up), so a replica death costs latency, not the request. Only the loss of the replica itself
        is retried: a `RayTaskError` means the replica answered with an error (even one it got from its own
        workers), which a retry would only repeat.
        """
        try:
            return await call()
        except (RayActorError, ReplicaUnavailableError) as err:  # ActorDiedError, ActorUnavailableError
            if isinstance(err, RayTaskError):
                raise
            logger.warning("a %s replica was lost mid-request (%s); retrying once", what, type(err).__name__)
        return await call()

    async def _nirvana_image(self, decision: RetrievalDecision, match: dict, prompt: str, width: int, height: int,
                             steps: int, seed: int) -> bytes:
        """NIRVANA: a hit resumes the large model from cached latents; a miss runs it fully and caches its
        latents after steps 5..25 (in the background)."""
        if decision.hit:
            return await self._retry_if_replica_lost(lambda: self.large.resume.remote(
                prompt, match["latents"], decision.k, width, height, steps, seed), "large model")
        if not match["cacheable"]:
            return await self._retry_if_replica_lost(
                lambda: self.large.generate.remote(prompt, width, height, steps, seed), "large model")
        png, latents = await self._retry_if_replica_lost(
            lambda: self.large.generate_with_snapshots.remote(prompt, width, height, steps, seed), "large model")
        self._in_background(self._admit_latents(match["query"], match["namespace"], latents))
        return png

    async def _admit_latents(self, query, namespace: str, latents: dict) -> None:
        try:
            await self.cache.add.remote(query, namespace, latents)
        except Exception:
            logger.exception("latent cache admission failed (the response was already sent)")

    def _pool_state(self, pool: Pool) -> PoolState:
        return PoolState(replicas=self.allocation[pool.value], in_flight=self.in_flight[pool])

    def _enter(self, pool: Pool) -> None:
        self.in_flight[pool] += 1
        self.metrics.set_in_flight(pool.value, self.in_flight[pool])

    def _leave(self, pool: Pool) -> None:
        self.in_flight[pool] -= 1
        self.metrics.set_in_flight(pool.value, self.in_flight[pool])

    def _count(self, decision: RetrievalDecision, pool: Pool, seconds: float) -> None:
        self.totals["requests"] += 1
        self.totals["hits" if decision.hit else "misses"] += 1
        self.totals[f"served_{pool.value}"] += 1
        self._unreported["requests"] += 1
        if decision.hit:
            self.k_mix[decision.k] += 1
            self._unreported["hits"] += 1
            self._unreported["k"][decision.k] += 1
        self.metrics.record("hit" if decision.hit else "miss", "ok", pool.value, decision.k, seconds)

    # -------------------------------------------------------------------------------------------- background
    def _admit(self, png: bytes, prompt: str, tenant: str, pool: Pool, decision: RetrievalDecision) -> None:
        if self.mode is not SystemMode.MODM or not should_admit(
                self.config.cache.admission, from_large_model=pool is Pool.LARGE, refined=decision.hit):
            return
        self._in_background(self._admit_one(png, prompt, tenant, pool, decision.k))

    def _in_background(self, admission) -> None:
        """Run a cache admission after the response; beyond the bound it is dropped, never queued."""
        if len(self._admissions) >= self.config.serving.max_pending_admissions:
            self.metrics.admissions_dropped.inc(tags={"mode": self.mode.value})
            admission.close()
            return
        task = asyncio.get_running_loop().create_task(admission)
        self._admissions.add(task)
        task.add_done_callback(self._admissions.discard)

    async def _admit_one(self, png: bytes, prompt: str, tenant: str, pool: Pool, k: int) -> None:
        try:
            key = await self.embedder.embed_for_cache.remote(png, prompt)
            await self.cache.add.remote(png, key, prompt, tenant, pool.value, k)
        except Exception:
            logger.exception("cache admission failed (the response was already sent)")

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.serving.stats_report_interval_s)
            if self.monitor is None:
                continue
            try:
                delta, self._unreported = self._unreported, {"requests": 0, "hits": 0, "k": Counter()}
                await self.monitor.report.remote(delta["requests"], delta["hits"], dict(delta["k"]))
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
