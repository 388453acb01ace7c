"""The `modm` command: model zoo, config checks, cache warm-up, policy calibration, the demo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from modm.constants import DEFAULT_TENANT


def _cmd_build_tiny(args) -> int:
    from modm.models import TARGET_STEP_COST_RATIO, build_tiny_zoo

    paths = build_tiny_zoo(args.directory)
    print(f"wrote the tiny zoo to {paths.root}: large={paths.large} small={paths.small} clip=local-dir:{paths.clip}")
    if args.measure:
        ratios = measure_ratio(paths.large, paths.small, args.sizes)
        for size, (large_s, small_s) in ratios.items():
            print(
                f"{size:>4} px: large {large_s * 1e3:7.1f} ms/step, small {small_s * 1e3:6.1f} ms/step, "
                f"ratio {large_s / small_s:.2f} (target {TARGET_STEP_COST_RATIO:.2f})"
            )
    return 0


def measure_ratio(large_dir: Path, small_dir: Path, sizes: list[int]) -> dict[int, tuple[float, float]]:
    from modm.config import ModelSpec
    from modm.generation import DiffusionGenerator

    large = DiffusionGenerator.from_spec(ModelSpec(source=str(large_dir), device="cpu"), "large")
    small = DiffusionGenerator.from_spec(ModelSpec(source=str(small_dir), device="cpu", guidance_scale=7.5), "small")
    return {size: (large.measure_step_cost_s(size), small.measure_step_cost_s(size)) for size in sizes}


def _cmd_measure(args) -> int:
    root = Path(args.directory)
    for size, (large_s, small_s) in measure_ratio(root / "large", root / "small", args.sizes).items():
        print(json.dumps({"size": size, "large_step_s": large_s, "small_step_s": small_s, "ratio": large_s / small_s}))
    return 0


def _cmd_config_check(args) -> int:
    from modm.config import load_config

    cfg = load_config(args.path)
    print(
        f"{args.path}: valid ({cfg.mode.value}; large={cfg.models.large.source}; "
        f"small={cfg.models.small.source if cfg.models.small else '-'})"
    )
    return 0


def _cmd_cache_warm(args) -> int:
    """Fill the image cache from a prompt list with the large model, before serving (MoDM pre-caches 10k): the
    app's own warm-up (modm.serving.warm) on in-process backends."""
    import asyncio

    from modm.cache import read_prompts
    from modm.config import ConfigError, SystemMode, load_config, resolve_relative_paths
    from modm.roles import ModelRole
    from modm.serving.local import LocalBackends
    from modm.serving.warm import warm_cache

    cfg = resolve_relative_paths(load_config(args.config), Path.cwd())
    if cfg.mode is not SystemMode.MODM:
        raise ConfigError(
            f"{args.config}: mode {cfg.mode.value!r} keeps no image cache to warm"
            + (
                " (NIRVANA's latent cache lives in its Serve app: set cache.warm in the config instead)"
                if cfg.mode is SystemMode.NIRVANA
                else ""
            )
        )
    prompts = read_prompts(args.prompts, args.limit)

    def progress(done: int, total: int, prompt: str) -> None:
        print(f"warm: {done}/{total} generated: {prompt[:60]}", file=sys.stderr, flush=True)

    with LocalBackends(cfg, roles=(ModelRole.LARGE,)) as local:
        report = asyncio.run(warm_cache(cfg, local.backends, prompts=prompts, tenant=args.tenant, progress=progress))
        entries = len(local.image_cache)
    print(
        json.dumps(
            {
                "generated": report["generated"],
                "already_cached": report["already_cached"],
                "failed": report["failed"],
                "prompts": len(prompts),
                "namespace": report["namespace"],
                "cache_entries": entries,
            }
        )
    )
    return 1 if report["failed"] else 0


def _cmd_calibrate(args) -> int:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    import yaml

    from modm.policy import QualitySample, fit_k_table

    path = Path(args.samples)
    table = pq.read_table(path) if path.suffix == ".parquet" else pacsv.read_csv(path)
    missing = {"score", "k", "quality", "full_quality"} - set(table.column_names)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
    rows = table.to_pylist()
    samples = [
        QualitySample(float(r["score"]), int(r["k"]), float(r["quality"]), float(r["full_quality"])) for r in rows
    ]
    rules = fit_k_table(samples, alpha=args.alpha, total_steps=args.total_steps, min_samples=args.min_samples)
    print(
        yaml.safe_dump(
            {"policy": {"total_steps": args.total_steps, "k_table": [r.model_dump() for r in rules]}}, sort_keys=False
        )
    )
    return 0


def _cmd_demo(args) -> int:
    from modm.demo import run_demo

    run_demo(args.config, Path(args.zoo), args.workload, args.size, args.steps, Path(args.cache_dir))
    return 0


SUBCOMMAND_PACKAGES = ("multistage", "quality", "sim", "world")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modm",
        description=__doc__,
        epilog="also: modm multistage ..., modm quality ..., modm sim ..., modm world ... (each --help)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="the tiny offline model zoo").add_subparsers(dest="action", required=True)
    build = models.add_parser("build-tiny", help="write the tiny zoo (large SD3-style, small SDXL-style, CLIP)")
    build.add_argument("directory")
    build.add_argument("--no-measure", dest="measure", action="store_false", help="skip the per-step cost ratio")
    build.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="image sides to measure at")
    build.set_defaults(func=_cmd_build_tiny)
    measure = models.add_parser("measure", help="large:small per-step cost of a zoo directory")
    measure.add_argument("directory")
    measure.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    measure.set_defaults(func=_cmd_measure)

    config = sub.add_parser("config", help="configuration files").add_subparsers(dest="action", required=True)
    check = config.add_parser("check", help="validate a system config YAML")
    check.add_argument("path")
    check.set_defaults(func=_cmd_config_check)

    cache = sub.add_parser("cache", help="the image cache").add_subparsers(dest="action", required=True)
    warm = cache.add_parser(
        "warm",
        help="fill the cache from a prompt list with the large model (resumable: prompts already cached are skipped)",
    )
    warm.add_argument("--config", required=True, help="system config or Serve config YAML")
    warm.add_argument("--prompts", required=True, help="prompts file: .txt (one a line) or .tsv ('prompt' column)")
    warm.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    warm.add_argument(
        "--tenant",
        default=DEFAULT_TENANT,
        help="whose namespace to fill (default: %(default)s, the one of requests that name no tenant)",
    )
    warm.set_defaults(func=_cmd_cache_warm)

    policy = sub.add_parser("policy", help="retrieval policy").add_subparsers(dest="action", required=True)
    cal = policy.add_parser("calibrate", help="fit a k table from (score, k, quality, full_quality) samples")
    cal.add_argument("samples", help="CSV or parquet with columns score, k, quality, full_quality")
    cal.add_argument("--alpha", type=float, default=0.95, help="quality kept: Q_hit(k) >= alpha * Q_full")
    cal.add_argument("--total-steps", type=int, default=50)
    cal.add_argument("--min-samples", type=int, default=20)
    cal.set_defaults(func=_cmd_calibrate)

    demo = sub.add_parser("demo", help="run the request pipeline in-process over the embedded workload")
    demo.add_argument(
        "--config", type=Path, default=None, help="system config (default: the embedded world system.yaml)"
    )
    demo.add_argument("--zoo", default=".modm/zoo", help="where the tiny zoo lives (built when missing)")
    demo.add_argument("--workload", type=Path, default=None, help="TSV of user<TAB>prompt (default: embedded)")
    demo.add_argument("--size", type=int, default=None, help="image side in pixels (default: the config's)")
    demo.add_argument("--steps", type=int, default=None, help="denoising steps T (default: the config's)")
    demo.add_argument("--cache-dir", default=".modm/demo/cache", help="cache directory, emptied first")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Sub-packages with their own command lines: modm multistage|quality|sim ...
    if argv[:1] and argv[0] in SUBCOMMAND_PACKAGES:
        import importlib

        return importlib.import_module(f"modm.{argv[0]}.cli").main(argv[1:])
    args = build_parser().parse_args(argv)
    from modm.cache import CacheError
    from modm.config import ConfigError
    from modm.generation import InvalidRequestError
    from modm.models import ModelLoadError

    try:
        return args.func(args)
    except (ConfigError, ModelLoadError, InvalidRequestError, CacheError, ValueError, FileNotFoundError) as err:
        print(f"modm: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
