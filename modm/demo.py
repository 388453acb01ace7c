"""The in-process demo: the request pipeline with in-process backends over the embedded workload; prints each
decision and a summary."""

from __future__ import annotations

import asyncio
import shutil
import statistics
import time
from importlib import resources
from pathlib import Path

from modm.config import SystemConfig, load_config, resolve_relative_paths
from modm.serving import ImageRequest, RequestPipeline
from modm.serving.local import LocalBackends


def default_config_path() -> Path:
    """The embedded default: the world's system config (the trained miniature world's models), the system that
    deployments/configs/local.yaml serves."""
    return Path(str(resources.files("modm") / "world" / "system.yaml"))


def demo_workload_path(config: SystemConfig | None = None) -> Path:
    """The embedded workload, a TSV with columns user_name, prompt. For a config whose embedder is the world CLIP:
    world prompts from modm.world.demo_workload (users rephrasing and varying their previous prompt). Otherwise:
    6 users, each refining a DiffusionDB prompt (CC0) a few times, interleaved in arrival order. Both have the
    temporal locality MoDM's cache exploits."""
    world = config is not None and config.embedder.kind.value == "hf_clip"
    return Path(str(resources.files("modm") / "data" / ("world_demo_prompts.tsv" if world else "demo_prompts.tsv")))


def read_workload(path: Path | None = None) -> list[tuple[str, str]]:
    """(user, prompt) rows of a user_name<TAB>prompt TSV with a header line."""
    path = path or demo_workload_path()
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if n == 1 or not line.strip():
            continue
        user, sep, prompt = line.partition("\t")
        if not sep or not prompt.strip():
            raise ValueError(f"{path}:{n}: expected 'user<TAB>prompt', got {line!r}")
        rows.append((user, prompt.strip()))
    return rows


def ensure_zoo(config: SystemConfig, zoo_dir: Path) -> None:
    """(Re)build the tiny zoo when the config uses models under zoo_dir and the zoo there is missing or stale."""
    from modm.models.tiny_zoo import build_tiny_zoo, zoo_is_current

    sources = [Path(m.source) for m in (config.models.large, config.models.small) if m is not None]
    uses_zoo = any(zoo_dir.resolve() in s.resolve().parents for s in sources)
    if uses_zoo and not zoo_is_current(zoo_dir):
        print(f"building the tiny model zoo in {zoo_dir} ...", flush=True)
        build_tiny_zoo(zoo_dir)


def run_demo(
    config_path: Path | None, zoo_dir: Path, workload: Path | None, size: int | None, steps: int | None, cache_dir: Path
) -> dict:
    # The embedded config names its models relative to the directory that holds the modm package; a user's config,
    # relative to where the command runs.
    base = Path(str(resources.files("modm"))).parent if config_path is None else Path.cwd()
    config = resolve_relative_paths(load_config(config_path or default_config_path()), base)
    # A fresh cache per demo run, so the output shows the cache filling up from empty.
    shutil.rmtree(cache_dir, ignore_errors=True)
    config = config.model_copy(update={"cache": config.cache.model_copy(update={"directory": str(cache_dir)})})
    ensure_zoo(config, zoo_dir)
    rows = read_workload(workload or demo_workload_path(config))
    with LocalBackends(config) as local:
        return asyncio.run(_serve_workload(config, local, rows, size, steps, cache_dir))


async def _serve_workload(
    config: SystemConfig,
    local: LocalBackends,
    rows: list[tuple[str, str]],
    size: int | None,
    steps: int | None,
    cache_dir: Path,
) -> dict:
    started = time.perf_counter()
    pipeline = RequestPipeline(config, local.backends)
    await pipeline.start()
    load_s = time.perf_counter() - started
    print(
        f"loaded {config.mode.value}: large={config.models.large.source} small="
        f"{config.models.small.source if config.models.small else '-'} embedder={config.embedder.kind.value} "
        f"in {load_s:.1f}s"
    )
    print(f"{'#':>3} {'user':<5} {'decision':<8} {'score':>6} {'k':>3} {'model':<6} {'seconds':>7}  prompt")
    records = []
    for i, (user, prompt) in enumerate(rows):
        t0 = time.perf_counter()
        served = await pipeline.generate(
            ImageRequest(prompt=prompt, tenant="demo", width=size, height=size, steps=steps)
        )
        await pipeline.drain_admissions()  # one request at a time: the next one may hit what this one cached
        seconds = time.perf_counter() - t0
        d = served.decision
        records.append((d, seconds))
        score = f"{d.score:.3f}" if d.score is not None else "-"
        print(
            f"{i:>3} {user:<5} {'hit' if d.hit else 'miss':<8} {score:>6} {d.k:>3} {d.model.value:<6} {seconds:>7.2f}  "
            f"{prompt[:60]}",
            flush=True,
        )
    stats = await pipeline.stats()
    await pipeline.close()
    hits = [s for d, s in records if d.hit]
    misses = [s for d, s in records if not d.hit]
    summary = {
        "requests": len(records),
        "hits": len(hits),
        "misses": len(misses),
        "hit_rate": len(hits) / max(1, len(records)),
        "k_mix": {int(k): n for k, n in stats["k_mix"].items()},
        "median_hit_s": statistics.median(hits) if hits else None,
        "median_miss_s": statistics.median(misses) if misses else None,
        "cache_entries": stats.get("cache", {}).get("entries", 0),
    }
    print(
        f"\n{summary['requests']} requests: {summary['hits']} hits, {summary['misses']} misses "
        f"(hit rate {summary['hit_rate']:.0%}); k-mix {summary['k_mix']}"
    )
    if hits and misses:
        print(
            f"median latency: hit {summary['median_hit_s']:.2f}s (small model, refines) vs miss "
            f"{summary['median_miss_s']:.2f}s (large model, full generation)"
        )
    print(f"cache: {summary['cache_entries']} entries in {cache_dir}")
    return summary
