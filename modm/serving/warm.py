"""`cache.warm`: the Serve app fills its cache from a prompt list with the large model before the router serves.

MoDM pre-caches 10k large-model images before serving. The pipeline runs this when it starts (in the Serve app: in
the Router's constructor, so the app is not RUNNING and no request is routed until the cache is warm); it uses the
app's own large-model pool (as many generations at once as there are replicas), embedder and cache, exactly as a
miss's admission does:

- modm mode: one full generation per prompt, keyed by its image embedding, into the CacheIndex (persistent; prompts
  the namespace already holds are skipped, so a restart does not regenerate them);
- nirvana mode: one full generation with snapshots per prompt, its latents after steps 5..25 keyed by the prompt
  embedding, into the LatentCache (in memory: it starts empty on every start, so every prompt is generated).

A prompt that fails is logged and skipped: a warm-up must not keep the app from serving. For a long list, run
`modm cache warm` before deploying instead (the image cache persists): the same function, on in-process backends.
Every Router replica runs the warm-up when it starts (the app builds one; with more, a restarted one finds the image
cache warm and skips what is there).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from modm.cache.warm import read_prompts
from modm.config import SystemConfig, SystemMode
from modm.constants import DEFAULT_TENANT
from modm.policy.tenancy import cache_scope
from modm.roles import ModelRole
from modm.serving.backends import Backends

logger = logging.getLogger(__name__)


async def warm_cache(
    config: SystemConfig,
    backends: Backends,
    *,
    prompts: list[str] | None = None,
    tenant: str = DEFAULT_TENANT,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict:
    """Fill the cache with one large-model generation per prompt: `prompts`, else `config.cache.warm`'s. Returns
    {"generated", "already_cached", "failed", "namespace"} (counts all zero without prompts). `progress(done, total,
    prompt)` after each generated image."""
    report = {"generated": 0, "already_cached": 0, "failed": 0, "namespace": None}
    warm = config.cache.warm
    if config.mode is SystemMode.VANILLA or (prompts is None and warm is None):
        return report
    source = "the given list" if prompts is not None else warm.prompts
    prompts = list(dict.fromkeys(prompts)) if prompts is not None else read_prompts(warm.prompts, warm.limit)
    large, embedder, cache = backends.models[ModelRole.LARGE], backends.embedder, backends.cache
    spec = config.models.large
    size, steps, seed = spec.default_size, spec.num_inference_steps, config.seed
    if config.mode is SystemMode.MODM:
        namespace = cache_scope(tenant, config.tenancy.shared_pool_tenants).write
        cached = set(await cache.cached_prompts(namespace))
        if len(prompts) > config.cache.capacity:
            logger.warning(
                "warm: %d prompts exceed the cache capacity %d; FIFO keeps the last %d, and a rerun regenerates the "
                "evicted ones",
                len(prompts),
                config.cache.capacity,
                config.cache.capacity,
            )
    else:
        namespace = f"{tenant}/{size}x{size}/{steps}"  # the pipeline's NIRVANA namespace of such requests
        cached = set()
    report["namespace"] = namespace
    todo = [p for p in prompts if p not in cached]
    report["already_cached"] = len(prompts) - len(todo)
    at_once = asyncio.Semaphore(
        max(1, config.monitor.gpu_budget - (config.monitor.min_small if config.mode is SystemMode.MODM else 0))
    )

    async def one(prompt: str) -> None:
        async with at_once:
            try:
                if config.mode is SystemMode.MODM:
                    png = await large.generate(prompt, size, size, steps, seed)
                    key = await embedder.embed_for_cache(png, prompt)
                    await cache.add(png, key, prompt, namespace, ModelRole.LARGE.value, 0)
                else:
                    _, latents = await large.generate_with_snapshots(prompt, size, size, steps, seed)
                    key = await embedder.embed_text(prompt)
                    await cache.add(key, namespace, latents)
            except Exception:
                report["failed"] += 1
                logger.exception("warm: generating %r failed; skipped", prompt[:80])
                return
            report["generated"] += 1
            if progress is not None:
                progress(report["generated"], len(todo), prompt)
            if report["generated"] % 10 == 0 or report["generated"] == len(todo):
                logger.info("warm: %d/%d generated", report["generated"], len(todo))

    logger.info(
        "warm: %d prompts from %s (%d already cached) into %s",
        len(prompts),
        source,
        report["already_cached"],
        namespace,
    )
    await asyncio.gather(*(one(p) for p in todo))
    logger.info("warm: done %s", report)
    return report
