"""The request pipeline: a validated request in, its images and decision out, with every backend injected.

    tenant -> validate -> count arrival -> retrieve (mode strategy) -> count decision -> route to a pool ->
    admission control -> render n images (retrying a lost replica once) -> count -> cache admission in background

An edit (an uploaded image refined toward a prompt) takes the path of a cache hit without the cache: the image is
checked, then refined by the small pool's img2img (the large model's img2img twin in vanilla and nirvana mode),
under the same admission control, retries and timeout; its results are never cached. `deliver` encodes the images
in the asked format and, for URL answers, writes them to the response store and signs their links.

Tenants are resolved by `tenants.py`, images delivered (encoded, or stored behind signed links) by `delivery.py`.

Ray-free and written once: `modm demo` runs it with in-process services, the Serve Router with proxies over
deployment handles (deployments/router.py), the unit tests with fakes. Everything the router used to decide —
authentication, tenancy, limits, routing, admission control, retries, the monitor's window counts, the bound on
background admissions, timeouts — lives here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from modm.config import SystemConfig, SystemMode
from modm.config.feature_cache import FEATURE_CACHE_INFO_KEY
from modm.config.parallel import ParallelMethod
from modm.config.schema import ImageQuality, ModelSpec
from modm.images import UploadError, png_bytes, png_text, read_upload
from modm.policy import BatchCapacity, PoolState, RetrievalDecision, WindowCounter, route
from modm.policy.api_keys import ApiKeyRing
from modm.policy.backpressure import PoolLoad, admit, seconds_to_drain
from modm.policy.load_view import PeerLoad, pool_in_flight
from modm.policy.requests import InvalidRequestError, check_dimensions, check_request_limits
from modm.policy.tenancy import cache_scope
from modm.roles import ModelRole
from modm.serving.backends import CAPACITY_POLL_S, CAPACITY_POLL_TIMEOUT_S, Backends
from modm.serving.calls import BackgroundWork, retry_if_replica_lost
from modm.serving.errors import (
    ModelFailed,
    NotFound,
    Overloaded,
    QueueFull,
    QueueRejected,
    RequestInvalid,
    RequestTimedOut,
)
from modm.serving.images_api import ModelCard, ModelList
from modm.serving.delivery import ImageDelivery
from modm.serving.links import LinkSigner
from modm.serving.metrics import NoMetrics, ServingMetrics
from modm.serving.request import (
    Decision,
    DeliveredImage,
    Delivery,
    EditRequest,
    ImageRequest,
    Job,
    ServedImages,
)
from modm.serving.response_store import StoredImage
from modm.serving.tiers import TieredPool, routed_pool
from modm.serving.strategies import Retrieved, strategy_for
from modm.serving.tenants import TenantResolver
from modm.serving.warm import warm_cache

logger = logging.getLogger(__name__)

__all__ = ["RequestPipeline"]

# A router's load report counts on the board for this many report intervals, and the others' sums it got back are
# trusted as long: a missed report or two is absorbed, a dead router's requests stop counting within a second or so.
LOAD_REPORT_TTL_INTERVALS = 4


class RequestPipeline:
    def __init__(
        self,
        config: SystemConfig,
        backends: Backends,
        *,
        metrics: ServingMetrics | None = None,
        signing_key: bytes | None = None,
        router_id: str | None = None,
    ):
        """`signing_key` signs the links of URL answers; every pipeline whose links must open on the others (the
        Router replicas of one app) shares one. None: a fresh key, for a pipeline alone in its process.
        `router_id` names this pipeline on the load board (the Serve replica's id); None: a fresh one."""
        self.config, self.mode, self.backends = config, config.mode, backends
        self._check_backends()
        self.clock = backends.clock
        self.started_at = int(self.clock.wall())
        self.metrics = metrics or NoMetrics()
        self.tenants = TenantResolver(ApiKeyRing.from_config(config.auth))
        self.roles = tuple(backends.models)
        # Only then do the images carry skip counts: without a feature cache the hot path reads no PNG chunks.
        models = (config.models.large, *config.models.tiers().values())
        self._feature_cached = any(spec.feature_cache for spec in models)
        self.totals: Counter[str] = Counter()
        self.k_mix: Counter[int] = Counter()
        # This router's requests in flight per pool (exact), and the other routers' as the load board last summed
        # them (None: alone, or not heard yet); routing and admission control see their sum (modm.policy.load_view).
        self.in_flight = dict.fromkeys(self.roles, 0)
        self.router_id = router_id or uuid.uuid4().hex
        self.peer_load: PeerLoad | None = None
        # Replicas per pool, as the monitor last said (a pool's one in-process instance counts as one).
        two_pools = ModelRole.SMALL in backends.models
        self.allocation = {
            ModelRole.LARGE: 1 if two_pools else config.monitor.gpu_budget,
            ModelRole.SMALL: 1 if two_pools else 0,
        }
        # The monitor's last answer: its allocation, the small-model tier and the inputs of both (in /v1/stats).
        self.monitor_view: dict | None = None
        # The monitor's R, H and P(k), counted at arrival and decision (modm.policy.window), since the last report.
        self.window = WindowCounter()
        self.background = BackgroundWork(config.serving.max_pending_admissions, self.metrics.admission_dropped)
        # Seconds per request of each pool, for admission control: the config's profile, else measured by the
        # pool in the background (until then every request is admitted).
        specs = {ModelRole.LARGE: config.models.large, ModelRole.SMALL: config.models.small}
        self.latency_s = {role: specs[role].profiled_latency_s for role in self.roles}
        # What one replica's batches cost, as the pools measure it while serving (None until they report).
        self.capacity: dict[ModelRole, BatchCapacity | None] = dict.fromkeys(self.roles)
        self.total_steps = {role: specs[role].num_inference_steps for role in self.roles}
        self.model_info: dict[ModelRole, dict] = {}
        self.strategy = strategy_for(self.mode)(config, backends, self._call, self.background, self.totals)
        signer = LinkSigner(signing_key or secrets.token_bytes(32), self.clock.wall)
        self.delivery = ImageDelivery(backends.store, signer, config.serving.image_url_ttl_s, self._call)
        self.warm_report = {"generated": 0, "already_cached": 0, "failed": 0, "namespace": None}
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
        self.started_at = int(self.clock.wall())
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._profile_pools()))
        if self.backends.monitor is not None:
            self._tasks.append(loop.create_task(self._report_forever()))
        if self.backends.load_board is not None:
            self._tasks.append(loop.create_task(self._report_load_forever()))
        self.warm_report = await warm_cache(self.config, self.backends)

    async def close(self) -> None:
        """Stop the background loops and wait for pending cache admissions."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.background.drain()

    # ------------------------------------------------------------------------------------------------ requests
    def tenant(self, header: str | None, authorization: str | None) -> str:
        """The request's tenant (modm.serving.tenants): refuses bad or missing credentials."""
        return self.tenants.tenant(header, authorization)

    def authenticate(self, authorization: str | None) -> str | None:
        """The API key's tenant; None when the API is open."""
        return self.tenants.authenticate(authorization)

    def validate(self, request: ImageRequest) -> Job:
        """The same limits the models enforce, checked before any work is sent; defaults resolved. A generation may
        be routed to either pool, so its size must suit both."""
        info = self.model_info[ModelRole.LARGE]
        width = info["default_size"] if request.width is None else request.width
        height = info["default_size"] if request.height is None else request.height
        return self._job(request, width, height, self._steps(request, ModelRole.LARGE), self.roles)

    def _steps(self, request: ImageRequest, role: ModelRole) -> int:
        """The request's steps, else its quality's on `role`'s model (ModelSpec.quality_steps), else the model's."""
        if request.steps is not None:
            if request.quality not in (None, ImageQuality.AUTO):
                raise RequestInvalid("give steps or quality, not both: quality stands for a number of steps")
            return request.steps
        if request.quality is None:
            return self.model_info[role]["num_inference_steps"]
        return self._spec(role).steps_for_quality(request.quality)

    def _spec(self, role: ModelRole) -> ModelSpec:
        return getattr(self.config.models, role.value)

    def _job(self, request: ImageRequest, width: int, height: int, steps: int, roles) -> Job:
        limits = self.config.limits
        served_id = self.config.serving.model_id
        if request.model is not None and request.model != served_id:
            raise RequestInvalid(
                f"model {request.model[:100]!r} is not served here; this system is {served_id!r} (GET /v1/models)"
            )
        if not 1 <= request.n <= limits.max_images:
            raise RequestInvalid(f"n={request.n} must be in [1, {limits.max_images}] images per request")
        seed = self.config.seed if request.seed is None else request.seed
        try:
            check_request_limits(request.prompt, steps, request.tenant, limits)
            for role in roles:
                model = self.model_info[role]
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
        return await self._within_timeout(self._serve(job, start))

    async def _within_timeout(self, serving: Awaitable[ServedImages]) -> ServedImages:
        timeout_s = self.config.serving.request_timeout_s
        try:
            return await asyncio.wait_for(serving, timeout=timeout_s)
        except asyncio.TimeoutError:
            self.totals["errors"] += 1
            self.metrics.request_finished("none", "timeout", None, 0, None)
            raise RequestTimedOut(f"no answer within {timeout_s:.0f}s") from None

    async def _serve(self, job: Job, start: float) -> ServedImages:
        retrieved = await self._retrieve(job)
        decision = retrieved.decision
        self.window.decided(decision.hit, decision.k)  # H and P(k) at decision time, before generation
        role = self._route(decision)
        job.tier = self._tier() if role is ModelRole.SMALL else None
        label = _decision_label(decision)
        self._check_admission(role, label, decision.k)
        images = await self._render(
            job, role, label, decision.k, lambda seed: self.strategy.render(job, retrieved, role, seed)
        )
        for png in images:
            self.strategy.admit(job, retrieved, role, png)
        self._count(decision, role, self.clock.monotonic() - start)
        return self._served(
            job,
            images,
            self._decision(
                job,
                role,
                hit=decision.hit,
                score=decision.score,
                k=decision.k,
                strength=decision.strength,
                entry_id=self.strategy.entry_id(retrieved),
            ),
        )

    async def _render(
        self, job: Job, role: ModelRole, label: str, k: int, image: Callable[[int], Awaitable[bytes]]
    ) -> list[bytes]:
        """The job's n images on the `role` pool, `image(seed)` each; pool failures become refusals."""
        t0 = self.clock.monotonic()
        self._enter(role)
        try:
            images = await asyncio.gather(*[image(job.seed + i) for i in range(job.n)])
        except QueueFull as err:  # the pool's bounded queue (backpressure.max_queued_requests) is full
            self._reject(label, k, role)
            raise QueueRejected(
                f"the {role.value} model is overloaded: {err}",
                retry_after_s=self._retry_after_s(role, err.retry_after_s),
            ) from None
        except Exception as err:
            self.totals["errors"] += 1
            self.metrics.request_finished(label, "error", role.value, k, None)
            logger.exception("request %s failed on the %s model", job.request_id, role.value)
            raise ModelFailed(f"the {role.value} model failed: {type(err).__name__}") from None
        finally:
            self._leave(role)
        job.timings_s["generate"] = self.clock.monotonic() - t0
        return list(images)

    def _decision(self, job: Job, role: ModelRole, **outcome) -> Decision:
        return Decision(
            request_id=job.request_id,
            mode=self.mode.value,
            model=role,
            tier=job.tier,
            timings_s=job.timings_s,
            **outcome,
        )

    def _served(self, job: Job, images: list[bytes], decision: Decision) -> ServedImages:
        skipped = feature_cache_counts(images) if self._feature_cached else None
        if skipped is not None:
            decision = decision.model_copy(update={"feature_cache": skipped})
        return ServedImages(
            images=images, decision=decision, created=int(self.clock.wall()), width=job.width, height=job.height
        )

    # --------------------------------------------------------------------------------------------------- edits
    async def edit(self, request: EditRequest) -> ServedImages:
        """Refine the uploaded image toward the prompt (img2img at request.strength); never cached. Edits are not
        counted in the monitor's window (R, H, P(k) describe generations)."""
        role = self._edit_role()
        info = self.model_info[role]
        image = await asyncio.to_thread(self._read_upload, request.image, info["max_size"])
        multiple = info["size_multiple"]
        # No size: the image's own, rounded down to the model's size multiple.
        width = max(multiple, image.width // multiple * multiple) if request.width is None else request.width
        height = max(multiple, image.height // multiple * multiple) if request.height is None else request.height
        job = self._job(request, width, height, self._steps(request, role), (role,))
        png = await asyncio.to_thread(png_bytes, image)
        self.totals["edits"] += 1
        return await self._within_timeout(self._serve_edit(job, role, png, request.strength))

    def _edit_role(self) -> ModelRole:
        """MoDM: the small pool, as a cache hit. Vanilla and nirvana: the large model's img2img twin."""
        role = ModelRole.SMALL if ModelRole.SMALL in self.backends.models else ModelRole.LARGE
        if self._spec(role).parallel.method is not ParallelMethod.NONE:
            raise RequestInvalid(
                f"edits run img2img on the {role.value} model, whose parallel inference has none; "
                "this deployment serves generations only"
            )
        return role

    @staticmethod
    def _read_upload(data: bytes, max_side: int):
        try:
            return read_upload(data, max_side=max_side)
        except UploadError as err:
            raise RequestInvalid(f"image: {err}") from None

    async def _serve_edit(self, job: Job, role: ModelRole, png: bytes, strength: float) -> ServedImages:
        start = self.clock.monotonic()
        k = round((1.0 - strength) * job.steps)  # the steps refinement skips, as a hit's k
        self._check_admission(role, "edit", k)
        job.tier = self._tier() if role is ModelRole.SMALL else None
        pool = routed_pool(self.backends.models[role], job.tier)

        def refine(seed: int) -> Awaitable[bytes]:
            return self._call(
                lambda: pool.refine(job.prompt, png, strength, job.width, job.height, job.steps, seed),
                f"{role.value} model",
            )

        images = await self._render(job, role, "edit", k, refine)
        self.totals[f"served_{role.value}"] += 1
        self.metrics.request_finished("edit", "ok", role.value, k, self.clock.monotonic() - start)
        return self._served(
            job,
            images,
            self._decision(job, role, hit=False, score=None, k=k, strength=strength, operation="edit"),
        )

    # ------------------------------------------------------------------------------------------------ delivery
    async def deliver(self, images: list[bytes], delivery: Delivery, tenant: str) -> list[DeliveredImage]:
        """The images in the asked format, inline or as signed links (modm.serving.delivery)."""
        return await self.delivery.deliver(images, delivery, tenant)

    async def stored_image(
        self, image_id: str, expires: int, signature: str, tenant_header: str | None, authorization: str | None
    ) -> StoredImage:
        """The image behind a signed link; a caller who presents credentials must be the image's tenant."""
        caller = self.tenants.presented(tenant_header, authorization)
        return await self.delivery.stored_image(image_id, expires, signature, caller)

    # -------------------------------------------------------------------------------------------------- models
    def models(self) -> ModelList:
        """GET /v1/models: the one model this system is, by its configured id."""
        return ModelList(data=[ModelCard(id=self.config.serving.model_id, created=self.started_at)])

    def model(self, model_id: str) -> ModelCard:
        if model_id != self.config.serving.model_id:
            raise NotFound(f"no model {model_id[:100]!r}; this system is {self.config.serving.model_id!r}")
        return self.models().data[0]

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
    def cluster_in_flight(self, role: ModelRole) -> int:
        """Requests in flight on the pool over every router: this one's now plus the others' last reported."""
        max_age_s = LOAD_REPORT_TTL_INTERVALS * self.config.serving.load_report_interval_s
        return pool_in_flight(self.in_flight[role], self.peer_load, role.value, self.clock.monotonic(), max_age_s)

    def _pool_state(self, role: ModelRole) -> PoolState:
        return PoolState(replicas=self.allocation[role], in_flight=self.cluster_in_flight(role))

    def _pool_load(self, role: ModelRole) -> PoolLoad | None:
        latency = self.latency_s[role]
        if latency is None:
            return None
        capacity = self.capacity[role]
        max_batch = 1 if capacity is None else capacity.max_batch_size
        # A full batch's latency as measured at that size (or the nearest size run); unmeasured: no batching gain.
        full = None if capacity is None else capacity.batch_latency_s(max_batch, self.total_steps[role])
        return PoolLoad(
            in_flight=self.cluster_in_flight(role),
            replicas=max(1, self.allocation[role]),
            latency_s=latency,
            max_batch=max_batch,
            full_batch_latency_s=None if max_batch == 1 else full,
        )

    def _check_admission(self, role: ModelRole, label: str, k: int) -> None:
        """429 + Retry-After when this request would be answered later than the bound (SLO or timeout)."""
        backpressure, load = self.config.backpressure, self._pool_load(role)
        if not backpressure.admission_control or load is None:
            return
        bound_s = backpressure.max_expected_latency_s or self.config.serving.request_timeout_s
        verdict = admit(load, bound_s)
        if not verdict.admitted:
            self._reject(label, k, role)
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

    def _reject(self, label: str, k: int, role: ModelRole) -> None:
        self.totals["rejected"] += 1
        self.metrics.request_finished(label, "rejected", role.value, k, None)

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
            "edits": self.totals["edits"],
            "evicted_before_fetch": self.totals["evicted_before_fetch"],
            "k_mix": {str(k): n for k, n in sorted(self.k_mix.items())},
            "served_by": {role.value: self.totals[f"served_{role.value}"] for role in ModelRole},
            # Over every router (this one's own count in `router`).
            "queue_depths": {
                role.value: self.cluster_in_flight(role) if role in self.in_flight else 0 for role in ModelRole
            },
            "router": {
                "id": self.router_id,
                "in_flight": {role.value: n for role, n in self.in_flight.items()},
                "peers_heard": self.peer_load is not None,
            },
            "allocation": {role.value: n for role, n in self.allocation.items()},
            "monitor": self.monitor_view,
            "tier": self._tier(),
            "tier_switches": self.totals["tier_switches"],
            "pending_admissions": len(self.background),
            "warm": self.warm_report,
            # What a replica of each pool measured of its batches (the last view the router read).
            "batching": {role.value: _capacity_view(self.capacity[role]) for role in self.roles},
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
        self.monitor_view = {key: value for key, value in allocation.items() if key != "history"}
        tier = allocation.get("tier")
        if tier is not None:
            self._use_tier(tier)

    def _tier(self) -> str | None:
        """The small-model tier hits go to (None without a small model)."""
        pool = self.backends.models.get(ModelRole.SMALL)
        if pool is None:
            return None
        return pool.tier if isinstance(pool, TieredPool) else ModelRole.SMALL.value

    def _use_tier(self, tier: str) -> None:
        """Hits go to small-model tier `tier` from now on: its pool, and admission control on its configured
        latency (models.small_tiers need profiled_latency_s, so a tier just scaled up needs no profiling)."""
        pool = self.backends.models.get(ModelRole.SMALL)
        if not isinstance(pool, TieredPool) or pool.tier == tier:
            return
        spec = self.config.models.tiers()[tier]
        pool.tier = tier
        self.latency_s[ModelRole.SMALL] = spec.profiled_latency_s
        self.total_steps[ModelRole.SMALL] = spec.num_inference_steps
        self.capacity[ModelRole.SMALL] = None  # the previous tier's batch costs
        self.totals["tier_switches"] += 1
        logger.info("small-model tier: %s (%s)", tier, spec.source)

    async def report_load(self) -> None:
        """Send this router's requests in flight per pool to the load board; take the other routers' sums."""
        ttl_s = LOAD_REPORT_TTL_INTERVALS * self.config.serving.load_report_interval_s
        others = await self.backends.load_board.report(
            self.router_id, {role.value: n for role, n in self.in_flight.items()}, ttl_s
        )
        self.peer_load = PeerLoad(in_flight=others, at=self.clock.monotonic())

    async def _report_load_forever(self) -> None:
        failing = False
        while True:
            try:
                await self.report_load()
                failing = False
            except Exception as err:  # the view falls back to this router's own counts once the last one ages
                if not failing:  # once per outage, not every interval
                    logger.warning("load board report failed (%r); routing by this router's own counts", err)
                failing = True
            await self.clock.sleep(self.config.serving.load_report_interval_s)

    async def _report_forever(self) -> None:
        while True:
            await self.clock.sleep(self.config.serving.stats_report_interval_s)
            try:
                await self.report_window()
            except Exception:
                logger.exception("monitor report failed")

    async def _profile_pools(self) -> None:
        """The batch-1 latency once (unless the config gives it), then, of the pools that batch, the batch costs
        they measure while serving."""
        for role in self.roles:
            if self.latency_s[role] is not None:
                continue
            try:
                self.latency_s[role] = await self.backends.models[role].profile()
            except Exception:
                logger.exception("profiling the %s model failed; its requests skip admission control", role.value)
        if not self._batching_roles():
            return  # one request at a time: the profile is the capacity, and a poll would queue behind generations
        while True:
            await self.refresh_capacity()
            await self.clock.sleep(CAPACITY_POLL_S)

    def _batching_roles(self) -> list[ModelRole]:
        return [role for role in self.roles if self.model_info.get(role, {}).get("max_batch_size", 1) > 1]

    async def refresh_capacity(self) -> None:
        """Ask each batching pool (one of its replicas) what its batches cost now. A poll waits for a free slot on
        the replica like any call; a busy pool keeps its last view."""
        for role in self._batching_roles():
            try:
                costs = await asyncio.wait_for(self.backends.models[role].capacity(), CAPACITY_POLL_TIMEOUT_S)
                self.capacity[role] = BatchCapacity.from_costs(costs)
            except Exception as err:  # keep the last view; admission control works without it
                logger.debug("capacity of the %s model not read: %r", role.value, err)


def _capacity_view(capacity: BatchCapacity | None) -> dict | None:
    if capacity is None:
        return None
    return {
        "max_batch_size": capacity.max_batch_size,
        "mean_batch_size": capacity.mean_batch_size,
        "seconds_per_image_step": {str(b): s for b, s in sorted(capacity.seconds_per_image_step.items())},
    }


def feature_cache_counts(images: list[bytes]) -> dict | None:
    """The feature-cache skip counts the model wrote into the images' PNGs (`ModelService._png`), summed; None
    when it wrote none."""
    found = [json.loads(text) for png in images if (text := png_text(png, FEATURE_CACHE_INFO_KEY)) is not None]
    if not found:
        return None
    return {
        "kind": found[0]["kind"],
        "unit": found[0]["unit"],
        "skipped": sum(one["skipped"] for one in found),
        "total": sum(one["total"] for one in found),
    }


def _decision_label(decision: RetrievalDecision) -> str:
    return "hit" if decision.hit else "miss"
