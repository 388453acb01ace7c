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
`modm cache warm` before deploying instead (the image cache persists). Every Router replica runs the warm-up when it
starts (the app builds one; with more, a restarted one finds the image cache warm and skips what is there).
"""

from __future__ import annotations

import asyncio
import logging

from modm.cache.warm import read_prompts
from modm.config import SystemConfig, SystemMode
from modm.constants import DEFAULT_TENANT
from modm.policy.tenancy import cache_scope
from modm.roles import ModelRole
from modm.serving.backends import Backends

logger = logging.getLogger(__name__)


async def warm_cache(config: SystemConfig, backends: Backends) -> dict:
    """Run `config.cache.warm`; returns {"generated", "already_cached", "failed"} (all zero without a warm)."""

    report = {"generated": 0, "already_cached": 0, "failed": 0}
    warm = config.cache.warm
    if warm is None or config.mode is SystemMode.VANILLA:
        return report
    prompts = read_prompts(warm.prompts, warm.limit)
    large, embedder, cache = backends.models[ModelRole.LARGE], backends.embedder, backends.cache
    spec = config.models.large
    size, steps, seed = spec.default_size, spec.num_inference_steps, config.seed
    if config.mode is SystemMode.MODM:
        namespace = cache_scope(DEFAULT_TENANT, config.tenancy.shared_pool_tenants).write
        cached = set(await cache.cached_prompts(namespace))
    else:
        namespace = f"{DEFAULT_TENANT}/{size}x{size}/{steps}"  # the router's NIRVANA namespace of such requests
        cached = set()
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
                    await cache.add(png, key, prompt, namespace, "large", 0)
                else:
                    _, latents = await large.generate_with_snapshots(prompt, size, size, steps, seed)
                    key = await embedder.embed_text(prompt)
                    await cache.add(key, namespace, latents)
            except Exception:
                report["failed"] += 1
                logger.exception("warm: generating %r failed; skipped", prompt[:80])
                return
            report["generated"] += 1
            if report["generated"] % 10 == 0 or report["generated"] == len(todo):
                logger.info("warm: %d/%d generated", report["generated"], len(todo))

    logger.info(
        "warm: %d prompts from %s (%d already cached) into %s",
        len(prompts),
        warm.prompts,
        report["already_cached"],
        namespace,
    )
    await asyncio.gather(*(one(p) for p in todo))
    logger.info("warm: done %s", report)
    return report
