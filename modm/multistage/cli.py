"""`modm multistage boundaries | train | world-efficiency | export`: stage boundaries, the training-efficiency runs
(digits, the miniature world), a servable pipeline.

Run as `python -m modm.multistage.cli <command> --help`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

__all__ = ["main"]

_DEFAULT_BOUNDARY_METHODS = ("optimal-denoiser", "uniform-t", "uniform-log-snr")


def _boundaries(args: argparse.Namespace) -> dict:
    import torch

    from modm.multistage.boundaries import SplitMethod
    from modm.multistage.clustering import (
        ClusteringConfig,
        optimal_denoiser_boundaries,
        uniform_log_snr_boundaries,
        uniform_t_boundaries,
    )
    from modm.multistage.digits import load_digits_images
    from modm.multistage.scheduler_steps import matching_scheduler, model_timestep_boundaries, stage_start_steps
    from modm.multistage.schedules import ScheduleKind, build_schedule

    torch.set_num_threads(args.threads)
    data, _ = load_digits_images(args.image_size, limit=args.limit)
    config = ClusteringConfig(num_samples=args.num_samples, eta=args.eta, alpha=args.alpha, seed=args.seed)
    rows = []
    for kind in (ScheduleKind(k) for k in args.schedule):
        schedule = build_schedule(kind)
        scheduler = matching_scheduler(schedule)
        for method in (SplitMethod(m) for m in args.method):
            if method is SplitMethod.OPTIMAL_DENOISER:
                found = optimal_denoiser_boundaries(data, schedule, config).boundaries
            elif method is SplitMethod.UNIFORM_T:
                found = uniform_t_boundaries(schedule, 3)
            else:
                found = uniform_log_snr_boundaries(schedule, 3, t_min=config.t_min)
            starts = stage_start_steps(found, scheduler, args.steps)
            model_timesteps = list(model_timestep_boundaries(found, scheduler))
            rows.append(
                {
                    "schedule": kind.value,
                    "method": method.value,
                    "t": list(found.t),
                    "log_snr": list(found.log_snr),
                    "scheduler": type(scheduler).__name__,
                    "num_inference_steps": args.steps,
                    "stage_start_step": starts,
                    "model_timestep_boundaries": model_timesteps,
                }
            )
    header = (
        f"{'schedule':8} {'method':17} {'t1':>7} {'t2':>7} {'logSNR1':>8} {'logSNR2':>8}  "
        f"first step of stage 2/1/0 ({args.steps} steps)   model timesteps"
    )
    print(
        f"digits {args.image_size}px, N={len(data)}, K={config.num_samples}, eta={config.eta:.5f}, "
        f"alpha={config.alpha}, seed={config.seed}"
    )
    print(header)
    for row in rows:
        starts = row["stage_start_step"]
        ts = ", ".join(f"{v:.4g}" for v in row["model_timestep_boundaries"])
        print(
            f"{row['schedule']:8} {row['method']:17} {row['t'][0]:7.4f} {row['t'][1]:7.4f} "
            f"{row['log_snr'][0]:8.3f} {row['log_snr'][1]:8.3f}  "
            f"{starts[2]!s:>4} {starts[1]!s:>4} {starts[0]!s:>4}  {row['scheduler']:32} {ts}"
        )
    return {
        "data": {"image_size": args.image_size, "num_images": len(data)},
        "clustering": config.model_dump(mode="json"),
        "rows": rows,
    }


def _train(args: argparse.Namespace) -> dict:
    import torch

    from modm.multistage.clustering import ClusteringConfig
    from modm.multistage.experiment import EfficiencyConfig, run_efficiency_experiment
    from modm.multistage.training import StageSampling, TrainConfig

    torch.set_num_threads(args.threads)
    config = EfficiencyConfig(
        image_size=args.image_size,
        budget_tflops=args.budget_tflops,
        num_evals=args.num_evals,
        fid_samples=args.fid_samples,
        sampling_steps=args.sampling_steps,
        clustering=ClusteringConfig(num_samples=args.num_samples, alpha=args.alpha, seed=args.seed),
        train=TrainConfig(
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            stage_sampling=StageSampling(args.stage_sampling),
            stage_weights=tuple(args.stage_weights) if args.stage_weights else None,
            seed=args.seed,
        ),
        seed=args.seed,
    )
    results = run_efficiency_experiment(config, save_dir=args.save_dir)
    b = results["boundaries_timesteps"]
    print(
        f"digits {config.image_size}px; boundaries t={[round(v, 4) for v in results['boundaries_t']]} "
        f"(DDPM timesteps {[round(v, 1) for v in b]}); classifier accuracy {results['classifier_accuracy']:.3f}; "
        f"real-vs-real FID {results['real_vs_real_fid']:.3f}"
    )
    for name in ("unified", "multistage"):
        run = results[name]
        print(
            f"\n{name}: {run['parameters'] / 1e6:.2f} M params, GFLOPs per training step by stage "
            f"{[round(f / 1e9, 2) for f in run['step_flops_per_stage']]}, stage probabilities "
            f"{[round(p, 3) for p in run['stage_probabilities']]}"
        )
        print(f"  {'TFLOPs':>7} {'steps':>6} {'FID':>8}  {'loss s0':>8} {'loss s1':>8} {'loss s2':>8} {'wall s':>7}")
        for p in run["curve"]:
            losses = " ".join(f"{v:8.4f}" for v in p["stage_losses"])
            print(f"  {p['train_flops'] / 1e12:7.2f} {p['steps']:6d} {p['fid']:8.3f}  {losses} {p['wall_s']:7.1f}")
    f = results["flops_to_target"]
    print(
        f"\nsame quality = FID ≤ {results['target_fid']:.3f}: unified {f['unified'] / 1e12:.2f} TFLOPs, "
        f"multistage {f['multistage'] / 1e12:.2f} TFLOPs -> multistage/unified = {f['multistage_over_unified']:.2f}"
    )
    return results


def _world_efficiency(args: argparse.Namespace) -> dict:
    import time

    import torch

    from modm.multistage.world_experiment import (
        WorldEfficiencyConfig,
        format_world_table,
        quick_world_config,
        run_world_efficiency_experiment,
    )

    torch.set_num_threads(args.threads)
    config = quick_world_config() if args.quick else WorldEfficiencyConfig()
    overrides = {
        "budget_tflops": args.budget_tflops,
        "num_evals": args.num_evals,
        "eval_samples": args.eval_samples,
        "train_images": args.train_images,
        "guidance_scale": args.guidance_scale,
        "seed": args.seed,
    }
    config = WorldEfficiencyConfig(**{**config.model_dump(), **{k: v for k, v in overrides.items() if v is not None}})
    started = time.perf_counter()
    results = run_world_efficiency_experiment(args.world, config)
    results["wall_s"] = time.perf_counter() - started
    results["command"] = "modm multistage " + " ".join(sys.argv[1:] if args.argv is None else args.argv)
    print(format_world_table(results))
    print(f"\nwall {results['wall_s']:.0f} s at {args.threads} torch thread(s)")
    return results


def _export(args: argparse.Namespace) -> dict:
    import torch

    from modm.multistage.serving import save_multistage_sd_pipeline, tiny_text_conditioned_unet
    from modm.multistage.text_digits import train_text_conditioned_digits
    from modm.multistage.training import TrainConfig
    from modm.multistage.unet import MultiStageUNet

    torch.set_num_threads(args.threads)
    if args.unet is not None:
        unet = MultiStageUNet.from_pretrained(args.unet)
    else:
        unet = tiny_text_conditioned_unet(tuple(args.timestep_boundaries), seed=args.seed)
    result = {"stage_boundaries": list(unet.config.stage_boundaries)}
    if args.train_steps:
        pipe, before, after = train_text_conditioned_digits(
            unet,
            args.train_steps,
            train_config=TrainConfig(batch_size=args.batch_size, seed=args.seed),
            limit=args.limit,
            seed=args.seed,
        )
        pipe.save_pretrained(args.out)
        print(
            f"trained {args.train_steps} steps on digit latents; stage losses "
            f"{[round(v, 4) for v in before]} -> {[round(v, 4) for v in after]}"
        )
        result.update(train_steps=args.train_steps, stage_losses_before=before, stage_losses_after=after)
    else:
        save_multistage_sd_pipeline(args.out, unet)
    print(
        f"wrote a StableDiffusionPipeline with a {unet.num_stages}-stage MultiStageUNet to {args.out}; "
        "load it with `import modm.multistage` then DiffusionPipeline.from_pretrained"
    )
    return {"out": str(args.out), **result}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modm multistage", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--image-size", type=int, default=16, help="digits are upscaled from 8 px to this size")
        p.add_argument("--num-samples", type=int, default=2000, help="K, Monte Carlo samples of the clustering")
        p.add_argument("--alpha", type=float, default=0.9, help="similarity threshold of the boundary rule")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=1, help="torch threads (the machine's cores are shared)")
        p.add_argument("--json", type=Path, default=None, help="also write the results here")

    b = sub.add_parser("boundaries", help="stage boundaries on digits for each schedule and split method")
    common(b)
    b.add_argument(
        "--schedule", nargs="+", default=["vp", "ddpm", "edm", "flow"], choices=["vp", "ddpm", "edm", "flow"]
    )
    b.add_argument("--method", nargs="+", default=list(_DEFAULT_BOUNDARY_METHODS), choices=_DEFAULT_BOUNDARY_METHODS)
    b.add_argument("--eta", type=float, default=2 / 255, help="pixel tolerance on ε* (data in [-1, 1])")
    b.add_argument("--steps", type=int, default=50, help="inference steps for the step-index conversion")
    b.add_argument("--limit", type=int, default=None, help="use only the first N digits")
    b.set_defaults(run=_boundaries)

    t = sub.add_parser("train", help="unified vs multi-stage U-Net on digits for the same training FLOPs")
    common(t)
    t.add_argument("--budget-tflops", type=float, default=20.0, help="training budget per model")
    t.add_argument("--num-evals", type=int, default=5, help="evaluations spread over the budget")
    t.add_argument("--fid-samples", type=int, default=500)
    t.add_argument("--sampling-steps", type=int, default=20, help="DDIM steps per generated digit")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--learning-rate", type=float, default=2e-3)
    t.add_argument("--stage-sampling", default="uniform", choices=["uniform", "time", "weights"])
    t.add_argument(
        "--stage-weights",
        type=float,
        nargs="+",
        default=None,
        help="relative stage probabilities, low-noise stage first (with --stage-sampling weights)",
    )
    t.add_argument(
        "--save-dir",
        type=Path,
        default=None,
        help="save the trained models here as DDIMPipeline directories (unified/, multistage/)",
    )
    t.set_defaults(run=_train)

    w = sub.add_parser(
        "world-efficiency",
        help="unified vs multi-stage text-conditioned U-Net in the miniature world for the same training FLOPs",
    )
    w.add_argument("--world", type=Path, required=True, help="world directory (e.g. modm/world/weights)")
    w.add_argument("--budget-tflops", type=float, default=None, help="training budget per model")
    w.add_argument("--num-evals", type=int, default=None, help="evaluations spread over the budget")
    w.add_argument("--eval-samples", type=int, default=None, help="world prompts generated per evaluation")
    w.add_argument("--train-images", type=int, default=None, help="world training images")
    w.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance (1: none)")
    w.add_argument("--seed", type=int, default=None)
    w.add_argument("--quick", action="store_true", help="tiny models, a few steps (checks the run end to end)")
    w.add_argument("--threads", type=int, default=1, help="torch threads (the machine's cores are shared)")
    w.add_argument("--json", type=Path, default=None, help="also write the results here")
    w.set_defaults(run=_world_efficiency)

    e = sub.add_parser("export", help="save a StableDiffusionPipeline whose unet is a MultiStageUNet")
    e.add_argument("--out", type=Path, required=True)
    e.add_argument(
        "--unet",
        type=Path,
        default=None,
        help="a saved text-conditioned MultiStageUNet (4 latent channels, cross_attention_dim 32) to "
        "package; default: a new randomly initialised one",
    )
    e.add_argument(
        "--timestep-boundaries",
        type=float,
        nargs="+",
        default=[333.0, 666.0],
        help="stage boundaries in DDIM training timesteps of the new unet (two → three stages)",
    )
    e.add_argument(
        "--train-steps",
        type=int,
        default=0,
        help="train the unet this many steps on digit latents (prompts 'a handwritten digit N') first",
    )
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--limit", type=int, default=None, help="train on the first N digits only")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--threads", type=int, default=1, help="torch threads (the machine's cores are shared)")
    e.add_argument("--json", type=Path, default=None)
    e.set_defaults(run=_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    try:
        results = args.run(args)
    except ValueError as err:  # bad input: one clear line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
