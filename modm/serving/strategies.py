"""One strategy per serving mode: what a request retrieves, how each image is made, and what is cached after.

- vanilla: no retrieval; every image is a full generation on the large model.
- modm: the prompt's embedding against the cached *images* of the namespaces the tenant may read; a hit refines the
  cached image on the routed pool at strength 1 - k/T, a miss generates; results enter the cache by the admission
  rule, keyed by their image embedding.
- nirvana: the prompt's embedding against cached *prompts*; a hit resumes the large model from cached latents after
  step k, a miss runs it fully and caches its latents after steps 5..25.

A strategy makes no routing, counting or admission-control decision (the pipeline does); it is told which pool
serves and calls the backends through the pipeline's retrying caller.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from modm.cache import should_admit
from modm.config import SystemConfig, SystemMode
from modm.policy import KTable, RetrievalDecision
from modm.roles import ModelRole
from modm.serving.backends import Backends
from modm.serving.calls import BackgroundWork, Call
from modm.serving.request import Job
from modm.serving.tiers import routed_pool

logger = logging.getLogger(__name__)

__all__ = [
    "CachedImage",
    "CachedLatents",
    "ModeStrategy",
    "ModmStrategy",
    "NirvanaStrategy",
    "Retrieved",
    "VanillaStrategy",
    "strategy_for",
]


@dataclass(frozen=True)
class Retrieved:
    """A retrieval's outcome: the decision, and what a hit builds on (strategy-specific subclasses)."""

    decision: RetrievalDecision


@dataclass(frozen=True)
class CachedImage(Retrieved):
    """MoDM: the cached image a hit refines."""

    entry_id: int | None = None
    png: bytes | None = None


@dataclass(frozen=True)
class CachedLatents(Retrieved):
    """NIRVANA: the latents a hit resumes from, and where a miss's latents go (None: not cacheable)."""

    latents: np.ndarray | None = None
    query: np.ndarray | None = None
    namespace: str | None = None


R = TypeVar("R", bound=Retrieved)


class ModeStrategy(ABC, Generic[R]):
    mode: SystemMode

    def __init__(
        self, config: SystemConfig, backends: Backends, call: Call, background: BackgroundWork, counters: dict
    ):
        self.config, self.backends, self.call, self.background = config, backends, call, background
        self.counters = counters  # the pipeline's totals, for events only the strategy sees

    @abstractmethod
    async def retrieve(self, job: Job) -> R:
        """The decision for `job` (embedding and cache calls, timed into job.timings_s)."""

    @abstractmethod
    def miss(self, job: Job) -> R:
        """The decision when retrieval failed: a miss that caches nothing it cannot key."""

    @abstractmethod
    async def render(self, job: Job, retrieved: R, role: ModelRole, seed: int) -> bytes:
        """One image of `job` (PNG) on the `role` pool."""

    def admit(self, job: Job, retrieved: R, role: ModelRole, png: bytes) -> None:
        """After a successful response: start caching `png` in the background (nothing by default)."""

    def entry_id(self, retrieved: R) -> int | None:
        """The cache entry a hit was built from, for the response (None by default)."""
        return None

    def _generate(self, role: ModelRole, job: Job, seed: int) -> Awaitable[bytes]:
        pool = routed_pool(self.backends.models[role], job.tier)
        return self.call(
            lambda: pool.generate(job.prompt, job.width, job.height, job.steps, seed), f"{role.value} model"
        )


class VanillaStrategy(ModeStrategy[Retrieved]):
    mode = SystemMode.VANILLA

    async def retrieve(self, job: Job) -> Retrieved:
        return Retrieved(RetrievalDecision.miss())

    def miss(self, job: Job) -> Retrieved:
        return Retrieved(RetrievalDecision.miss())

    async def render(self, job: Job, retrieved: Retrieved, role: ModelRole, seed: int) -> bytes:
        return await self._generate(role, job, seed)


class ModmStrategy(ModeStrategy[CachedImage]):
    mode = SystemMode.MODM

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.k_table = KTable.from_config(self.config.policy)

    async def retrieve(self, job: Job) -> CachedImage:
        cache, embedder = self.backends.cache, self.backends.embedder
        t0 = self.backends.clock.monotonic()
        query = await embedder.embed_text(job.prompt)
        t1 = self.backends.clock.monotonic()
        job.timings_s["embed"] = t1 - t0
        # One call: a match at or over the hit threshold comes with its image.
        found = await self.call(lambda: cache.lookup(query, list(job.scope.read), self.k_table.hit_threshold), "cache")
        match = found.match
        decision = self.k_table.decide(None if match is None else match.score)
        retrieved = CachedImage(decision)
        if decision.hit:
            # The entry may be evicted between the query and the fetch of its image (FIFO at capacity): a miss.
            if found.png is None:
                logger.info("cache entry %s was evicted before its image was fetched; serving a miss", match.entry_id)
                self.counters["evicted_before_fetch"] += 1
                retrieved = CachedImage(RetrievalDecision.miss(decision.score))
            else:
                retrieved = CachedImage(decision, entry_id=match.entry_id, png=found.png)
        job.timings_s["retrieve"] = self.backends.clock.monotonic() - t1
        return retrieved

    def miss(self, job: Job) -> CachedImage:
        return CachedImage(RetrievalDecision.miss())

    async def render(self, job: Job, retrieved: CachedImage, role: ModelRole, seed: int) -> bytes:
        if not retrieved.decision.hit:
            return await self._generate(role, job, seed)
        pool, strength = routed_pool(self.backends.models[role], job.tier), retrieved.decision.strength
        return await self.call(
            lambda: pool.refine(job.prompt, retrieved.png, strength, job.width, job.height, job.steps, seed),
            f"{role.value} model",
        )

    def admit(self, job: Job, retrieved: CachedImage, role: ModelRole, png: bytes) -> None:
        if should_admit(
            self.config.cache.admission, from_large_model=role is ModelRole.LARGE, refined=retrieved.decision.hit
        ):
            self.background.submit(self._admit(job, png, role, retrieved.decision.k), "cache admission")

    async def _admit(self, job: Job, png: bytes, role: ModelRole, k: int) -> None:
        key = await self.backends.embedder.embed_for_cache(png, job.prompt)
        await self.backends.cache.add(png, key, job.prompt, job.scope.write, role.value, k)

    def entry_id(self, retrieved: CachedImage) -> int | None:
        return retrieved.entry_id if retrieved.decision.hit else None


class NirvanaStrategy(ModeStrategy[CachedLatents]):
    mode = SystemMode.NIRVANA

    async def retrieve(self, job: Job) -> CachedLatents:
        query = await self.backends.embedder.embed_text(job.prompt)
        namespace = f"{job.tenant}/{job.width}x{job.height}/{job.steps}"  # latents resume only a run of this shape
        cacheable = job.steps == self.config.policy.total_steps
        key = {"query": query, "namespace": namespace} if cacheable else {}
        if not cacheable or job.n > 1:  # n > 1 would resume n copies of one cached run
            return CachedLatents(RetrievalDecision.miss(), **key)
        found = await self.backends.cache.lookup(query, namespace)
        if not found["hit"]:
            return CachedLatents(RetrievalDecision.miss(found["score"]), **key)
        k = found["k"]
        decision = RetrievalDecision(hit=True, k=k, strength=1.0 - k / job.steps, score=found["score"])
        return CachedLatents(decision, latents=found["latents"], **key)

    def miss(self, job: Job) -> CachedLatents:
        return CachedLatents(RetrievalDecision.miss())  # no key: a miss whose latents cannot be cached

    async def render(self, job: Job, retrieved: CachedLatents, role: ModelRole, seed: int) -> bytes:
        large = self.backends.models[ModelRole.LARGE]  # NIRVANA serves one model
        if retrieved.decision.hit:
            k = retrieved.decision.k
            return await self.call(
                lambda: large.resume(job.prompt, retrieved.latents, k, job.width, job.height, job.steps, seed),
                "large model",
            )
        if retrieved.namespace is None:
            return await self._generate(ModelRole.LARGE, job, seed)
        png, latents = await self.call(
            lambda: large.generate_with_snapshots(job.prompt, job.width, job.height, job.steps, seed), "large model"
        )
        self.background.submit(
            self.backends.cache.add(retrieved.query, retrieved.namespace, latents), "latent cache admission"
        )
        return png


STRATEGIES: dict[SystemMode, type[ModeStrategy]] = {
    SystemMode.VANILLA: VanillaStrategy,
    SystemMode.MODM: ModmStrategy,
    SystemMode.NIRVANA: NirvanaStrategy,
}


def strategy_for(mode: SystemMode) -> type[ModeStrategy]:
    return STRATEGIES[mode]
