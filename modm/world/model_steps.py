"""The build steps of the world's VAE and diffusion models (appended to `modm.world.build.BUILD_STEPS`).

Each step reads the components before it from the world directory (the CLIP's text tower, the VAE), trains one
model and saves it with `save_pretrained`: the VAE as a model folder, the diffusion models as complete pipeline
folders that `modm.models.loading.load_pipeline` loads. The last step measures the per-step cost of each pipeline
at the serving size (batch 1, guidance on) and prints the large:small ratio.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from modm.world.diffusion import (
    DiffusionTrainSpec,
    DdpmObjective,
    RectifiedFlowObjective,
    train_denoiser,
    training_set,
    world_latents,
)
from modm.world.pipelines import (
    LARGE,
    SMALL,
    SMALL2,
    WORLD_IMAGE_SIZE,
    WORLD_SERVING_THREADS,
    large_pipeline,
    large_transformer,
    save_pipeline,
    small_pipeline,
    small_unet,
    text_encoders_from_clip,
    world_model_spec,
)
from modm.world.vae import VaeTrainSpec, pixels, psnr, reconstruct, train_vae

# 8 latent channels at 16x16: measured, the judge reads 0.71 shape+colour on reconstructions of 4-channel latents
# after 400 steps, 0.90 on 8-channel ones after 800 of 1,200 (the judge's reading of reconstructions caps what the
# diffusion models can score).
VAE_SPEC = VaeTrainSpec(latent_channels=8, steps=1200, batch_size=32)
# Training budgets: the small models train on fewer steps than the large, as SDXL is to SD3.5-Large. The large
# model learns colour and position first and shape late: at 900 steps of 64 (12,000 images) it drew the right colour
# at the right place with shape at chance (judge shape+colour 0.105); 4,000 steps on 24,000 images reach 0.77 (the
# VAE's reconstructions cap it at 0.90), 35 minutes on the two cores with two torch threads.
LARGE_TRAIN = DiffusionTrainSpec(steps=4000, batch_size=64, learning_rate=1e-3, warmup_steps=100)
# The small models (v-prediction on a zero-terminal-SNR schedule, modm.world.pipelines.SMALL_SCHEDULER): at 800
# steps the small one draws colour, size and position (judge 0.77, 0.77, 0.96 on 128 prompts) with shape at chance;
# with SDXL's epsilon schedule the same UNet drew tinted smudges (colour 0.02).
SMALL_TRAIN = DiffusionTrainSpec(steps=3000, batch_size=64, learning_rate=1e-3, warmup_steps=100)
SMALL2_TRAIN = DiffusionTrainSpec(steps=1500, batch_size=64, learning_rate=1e-3, warmup_steps=100)
TRAIN_IMAGES = {"large": 24_000, "small": 24_000, "small2": 24_000}
PIPELINE_FILES = ["model_index.json", "world_model.json"]
_SEED_OFFSETS = {"vae": 10, "large": 11, "small": 12, "small2": 13}


def _quick(spec: DiffusionTrainSpec) -> DiffusionTrainSpec:
    return replace(spec, steps=3, batch_size=4, warmup_steps=1)


def _images(samples) -> np.ndarray:
    return np.stack([s.image for s in samples])


def vae_step(ctx, out: Path):
    from modm.world.build import StepResult
    from modm.world.eval import EVAL_PROMPTS_START

    spec = replace(VAE_SPEC, seed=ctx.seed + _SEED_OFFSETS["vae"])
    if ctx.quick:
        spec = replace(spec, steps=3, batch_size=4, train_images=16)
    started = time.perf_counter()
    vae = train_vae(_images(ctx.train_samples(spec.train_images)), spec, progress=ctx.progress("vae", spec.steps))
    seconds = time.perf_counter() - started
    check = ctx.world.samples(EVAL_PROMPTS_START, 16 if ctx.quick else 512)
    x = pixels(_images(check))
    recon = reconstruct(vae, x)
    info = {
        "train_seconds": round(seconds, 1),
        "steps": spec.steps,
        "seed": spec.seed,
        "latent": [spec.latent_channels, WORLD_IMAGE_SIZE // spec.downsample, WORLD_IMAGE_SIZE // spec.downsample],
        "shift_factor": round(vae.config.shift_factor, 5),
        "scaling_factor": round(vae.config.scaling_factor, 5),
        "psnr_db": round(psnr(x, recon), 2),
        "parameters": sum(p.numel() for p in vae.parameters()),
    }
    judge_dir = ctx.out_dir / ctx.manifest.components["judge"].path if "judge" in ctx.manifest.components else None
    if judge_dir is not None:  # legibility: the judge reads reconstructions as it reads the originals
        from modm.world.judge import Judge, accuracy, score_image
        from modm.world.vae import to_uint8

        judge = Judge.load(judge_dir)
        info["judge_on_reconstructions"] = {
            k: round(v, 4)
            for k, v in accuracy([score_image(r, s.scene) for r, s in zip(judge.read(to_uint8(recon)), check)]).items()
        }
    vae.to(torch.float16).save_pretrained(out)
    return StepResult(files=["config.json", "diffusion_pytorch_model.safetensors"], info=info)


def _load_vae(ctx):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(str(ctx.component_dir("vae")), dtype=torch.float32).eval()


def _diffusion_step(role: str, train: DiffusionTrainSpec, build_model, build_pipe, objective_for, *, shifted: bool):
    """`shifted`: the pipeline class subtracts the VAE's shift_factor (SD3) or not (SDXL)."""

    def run(ctx, out: Path):
        from modm.world.build import StepResult

        spec = replace(train, seed=ctx.seed + _SEED_OFFSETS[role])
        n_images = TRAIN_IMAGES[role]
        if ctx.quick:
            spec, n_images = _quick(spec), 16
        encoders = text_encoders_from_clip(ctx.component_dir("clip"))
        vae = _load_vae(ctx)
        samples = ctx.train_samples(n_images)
        latents = world_latents(vae, _images(samples), shifted=shifted)
        model = build_model(latents.shape[1], latents.shape[-1], encoders, spec.seed)
        pipe = build_pipe(model, vae, encoders)
        data = training_set(pipe, latents, [s.prompt for s in samples])
        started = time.perf_counter()
        final_loss = train_denoiser(model, objective_for(pipe), data, spec, progress=ctx.progress(role, spec.steps))
        seconds = time.perf_counter() - started
        params = sum(p.numel() for p in model.parameters())
        info = {
            "class": type(pipe).__name__,
            "denoiser": type(model).__name__,
            "parameters": params,
            "train_seconds": round(seconds, 1),
            "final_loss": round(final_loss, 4),
            "train_images": n_images,
            **{k: v for k, v in spec.to_json().items() if k in ("steps", "batch_size", "seed")},
        }
        save_pipeline(
            pipe,
            out,
            {
                "role": role,
                "train": spec.to_json(),
                "info": info,
                "serving": world_model_spec(out, role).model_dump(exclude={"source"}),
            },
        )
        return StepResult(files=PIPELINE_FILES, info=info)

    return run


def _large_model(channels, size, encoders, seed):
    return large_transformer(LARGE, channels, size, encoders, seed)


def _small_model(spec):
    return lambda channels, size, encoders, seed: small_unet(spec, channels, size, encoders, seed)


def _ddpm(pipe):
    return DdpmObjective(pipe.scheduler.config, WORLD_IMAGE_SIZE)


STEP_COSTS_FILE = "step_costs.json"


def serving_step_ratio(world_dir: Path, small: str = "small") -> float:
    """The build's measured large:`small` per-step cost at the serving batch size (what a busy replica saves)."""
    from modm.world.format import validate_world_dir

    manifest = validate_world_dir(world_dir, ("step_costs",))
    costs = json.loads((world_dir / manifest.components["step_costs"].path / STEP_COSTS_FILE).read_text("utf-8"))
    return float(costs[f"large_{small}_ratio_serving_batch"])


def step_costs_step(ctx, out: Path):
    """Seconds per image-step of each pipeline at the serving size, guidance on, with a replica's torch threads, at
    batch 1 and at the batch the world's system config serves under load (modm/world/system.yaml's large
    `max_batch_size`; a test keeps deployments/configs/local.yaml equal to it). At batch 1 these small models are
    bound by per-module overhead, so the ratio there understates what a busy replica, whose step batches fill, saves."""
    from modm.config import load_config
    from modm.generation.generator import DiffusionGenerator
    from modm.models.loading import load_pipeline
    from modm.world.build import StepResult

    serving_batch = load_config(Path(__file__).with_name("system.yaml")).models.large.batching.max_batch_size
    suffixes = {1: "", serving_batch: "_serving_batch"}  # the keys of each batch size's numbers in step_costs.json
    costs: dict[int, dict[str, float]] = {b: {} for b in suffixes}
    build_threads = torch.get_num_threads()
    torch.set_num_threads(WORLD_SERVING_THREADS)  # more threads slow these tiny models' many small ops down
    try:
        for role in ("large", "small", "small2"):
            spec = world_model_spec(ctx.component_dir(role), role, device="cpu")
            generator = DiffusionGenerator(load_pipeline(spec), spec, role)
            for b in suffixes:
                step_s = generator.measure_step_cost_s(
                    WORLD_IMAGE_SIZE,
                    steps=(2, 4) if ctx.quick else (2, 12),
                    repeats=1 if ctx.quick else 3,
                    batch_size=b,
                )
                costs[b][role] = step_s / b
    finally:
        torch.set_num_threads(build_threads)
    info: dict[str, float | int] = {"serving_batch_size": serving_batch, "threads": WORLD_SERVING_THREADS}
    for b, suffix in suffixes.items():
        for role, seconds in costs[b].items():
            info[f"{role}_step_ms{suffix}"] = round(1000 * seconds, 2)
        for other in ("small", "small2"):
            info[f"large_{other}_ratio{suffix}"] = round(costs[b]["large"] / max(costs[b][other], 1e-9), 2)
    out.mkdir(parents=True, exist_ok=True)
    (out / STEP_COSTS_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    for b, suffix in suffixes.items():
        print(
            f"per image-step at {WORLD_IMAGE_SIZE}x{WORLD_IMAGE_SIZE}, batch {b}, guidance on,"
            f" {WORLD_SERVING_THREADS} thread(s): "
            + ", ".join(f"{r} {1000 * c:.2f} ms" for r, c in costs[b].items())
            + f"; large:small = {info['large_small_ratio' + suffix]} (target 5.5),"
            f" large:small2 = {info['large_small2_ratio' + suffix]}"
        )
    return StepResult(files=[STEP_COSTS_FILE], info=info)


def model_build_steps():
    """The BuildSteps of this module, in build order (after the CLIPs and the judge)."""
    from modm.world.build import BuildStep

    return [
        BuildStep("vae", "vae", vae_step),
        BuildStep(
            "large",
            "large",
            _diffusion_step(
                "large",
                LARGE_TRAIN,
                _large_model,
                large_pipeline,
                lambda pipe: RectifiedFlowObjective(),
                shifted=True,
            ),
        ),
        BuildStep(
            "small",
            "small",
            _diffusion_step("small", SMALL_TRAIN, _small_model(SMALL), small_pipeline, _ddpm, shifted=False),
        ),
        BuildStep(
            "small2",
            "small2",
            _diffusion_step("small2", SMALL2_TRAIN, _small_model(SMALL2), small_pipeline, _ddpm, shifted=False),
        ),
        BuildStep("step_costs", "step_costs", step_costs_step),
    ]


EVAL_STEPS = 20  # denoising steps of the eval rows (the pipelines' Euler samplers)


def _eval_entry(role: str):
    def make(world_dir: Path, manifest):
        from modm.models.loading import load_pipeline
        from modm.world.pipelines import pipeline_generator

        if role not in manifest.components:
            return None
        pipe = load_pipeline(world_model_spec(world_dir / manifest.components[role].path, role, device="cpu"))
        return pipeline_generator(pipe, steps=EVAL_STEPS, role=role)

    return make


def model_eval_entries():
    """`modm world eval` rows of the diffusion models, each alone (txt2img from its saved pipeline)."""
    from modm.world.cli import EvalEntry

    return [EvalEntry(role, _eval_entry(role)) for role in ("large", "small", "small2")]
