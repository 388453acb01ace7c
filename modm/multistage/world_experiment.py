"""Unified vs multi-stage text-conditioned U-Net in the miniature world at an equal training-FLOPs budget, with EMA.

Data: world training images (indices train_start .. train_start + train_images, far below the eval range) encoded
by the committed world VAE (posterior means, SDXL's normalisation z * scaling_factor, no shift), conditioned on the
committed world CLIP's text tower: its last hidden states of each caption (PIPELINE_TEXT_TOKENS tokens) are the
cross-attention input. A fixed fraction of images trains with the encoding of "" instead, so sampling can use
classifier-free guidance. The forward process is SDXL's (DDPM, scaled-linear betas), as the world's small models.

Stage boundaries: the optimal-denoiser clustering (Alg. 1 of the multi-stage paper) on the normalised latents; if
its α rule finds no boundary there, equal log-SNR thirds (the method used is recorded). Both models share the
encoder widths; the multi-stage decoders follow the paper's width ratio (1.5x / 1x / 0.125x of the unified
decoder). Each model trains for the same FLOPs (StageSampledTrainer counts them) and is evaluated at evenly spaced
checkpoints with its EMA weights: world prompts from the eval range sampled with DDIM + the world VAE's decoder,
then `modm.world.eval.evaluate_generator` (judge accuracy, FID on judge features, CLIPScore of the second CLIP).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from modm.multistage.clustering import ClusteringConfig, NoBoundaryError, optimal_denoiser_boundaries
from modm.multistage.clustering import uniform_log_snr_boundaries, uniform_t_boundaries
from modm.multistage.experiment import flops_to_reach_metric
from modm.multistage.scheduler_steps import model_timestep_boundaries
from modm.multistage.schedules import BetaSchedule, DiscreteDDPMSchedule
from modm.multistage.training import StageSampledTrainer, TrainConfig, make_stage_validation, stage_timestep_ranges
from modm.multistage.unet import MultiStageUNet

__all__ = [
    "REQUIRED_COMPONENTS",
    "WorldEfficiencyConfig",
    "WorldText",
    "flops_to_reach_metric",
    "quick_world_config",
    "run_world_efficiency_experiment",
    "sample_world_latents",
]

logger = logging.getLogger(__name__)

REQUIRED_COMPONENTS = ("clip", "vae", "judge", "clip_score")
# Quality metrics compared across the two models: (key in a curve point, higher is better).
METRICS = {"fid": False, "clip_score": True, "judge_shape_colour": True, "judge_all": True, "judge_colour": True}
# SDXL's betas, as the world's small UNets are trained on (modm.world.pipelines.small_pipeline).
BETA_START, BETA_END = 0.00085, 0.012


class WorldEfficiencyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    train_start: int = Field(default=0, ge=0, description="First world training index.")
    train_images: int = Field(default=8000, gt=0, description="World training images (and captions).")
    budget_tflops: float = Field(default=28.0, gt=0, description="Training budget per model, in TFLOPs.")
    num_evals: int = Field(default=4, ge=1, description="Evaluations spread evenly over the budget.")
    eval_samples: int = Field(default=300, gt=0, description="Eval-range prompts generated per evaluation.")
    real_images: int = Field(default=2000, gt=0, description="Real world images the FID compares against.")
    sampling_steps: int = Field(default=20, gt=0, description="DDIM steps per generated image.")
    guidance_scale: float = Field(default=4.0, ge=1, description="Classifier-free guidance (1: none).")
    unconditional_fraction: float = Field(
        default=0.1, ge=0, lt=1, description='Training images conditioned on "" (the guidance target).'
    )
    sample_batch: int = Field(default=100, gt=0, description="Prompts per sampling batch.")
    validation_per_stage: int = Field(default=128, gt=0, description="Fixed validation samples per stage.")
    encoder_channels: tuple[int, ...] = Field(default=(32, 64), description="Shared encoder widths (both models).")
    decoder_channels: tuple[tuple[int, ...], ...] = Field(
        default=((48, 96), (32, 64), (8, 16)),
        description="Multi-stage decoder widths, low-noise stage first (paper ratio 192/128/16 of 128).",
    )
    attention_head_dim: int = Field(default=8, gt=0, description="Channels per attention head.")
    norm_num_groups: int = Field(default=8, gt=0, description="GroupNorm groups of both models.")
    num_train_timesteps: int = Field(default=1000, ge=2, description="DDPM training timesteps.")
    boundary_method: Literal["optimal-denoiser", "uniform-log-snr", "uniform-t"] = Field(
        default="optimal-denoiser",
        description="Stage split; optimal-denoiser falls back to uniform-log-snr when its α rule finds none.",
    )
    clustering: ClusteringConfig = Field(
        default_factory=lambda: ClusteringConfig(num_samples=1000), description="Boundary search."
    )
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(batch_size=64, learning_rate=1e-3, ema_decay=0.999),
        description="Optimiser, stage sampling and EMA of both models.",
    )
    seed: int = Field(default=0, description="Seed of initialisation, caption dropout and sampling noise.")

    @model_validator(mode="after")
    def _ranges(self) -> "WorldEfficiencyConfig":
        from modm.world.eval import EVAL_PROMPTS_START

        if self.train_start + self.train_images > EVAL_PROMPTS_START:
            raise ValueError(
                f"training indices {self.train_start}..{self.train_start + self.train_images} reach the eval range "
                f"(from {EVAL_PROMPTS_START})"
            )
        return self


def quick_world_config() -> WorldEfficiencyConfig:
    """A few steps of tiny models on a few images: checks the experiment runs end to end (numbers mean nothing)."""
    return WorldEfficiencyConfig(
        train_images=32,
        budget_tflops=0.004,
        num_evals=2,
        eval_samples=6,
        real_images=8,
        sampling_steps=2,
        sample_batch=6,
        validation_per_stage=4,
        encoder_channels=(8, 16),
        decoder_channels=((16, 24), (8, 16), (8, 8)),
        clustering=ClusteringConfig(num_samples=64),
        train=TrainConfig(batch_size=4, learning_rate=1e-3, ema_decay=0.999),
    )


class WorldText:
    """The world CLIP's text tower: captions -> last hidden states (n, PIPELINE_TEXT_TOKENS, hidden)."""

    def __init__(self, clip_dir: str | Path, device: torch.device):
        from modm.world.pipelines import text_encoders_from_clip

        encoders = text_encoders_from_clip(clip_dir)
        self.tokenizer, self.encoder, self.device = encoders.tokenizer, encoders.plain.to(device), device
        self.hidden = encoders.hidden

    @torch.no_grad()
    def encode(self, captions: Sequence[str], batch_size: int = 512) -> torch.Tensor:
        states = []
        for i in range(0, len(captions), batch_size):
            ids = self.tokenizer(
                list(captions[i : i + batch_size]),
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)
            states.append(self.encoder(ids).last_hidden_state.float())
        return torch.cat(states)


@torch.no_grad()
def sample_world_latents(
    model: MultiStageUNet,
    scheduler: DDPMScheduler,
    conditions: torch.Tensor,
    null_condition: torch.Tensor,
    seeds: Sequence[int],
    latent_shape: tuple[int, int, int],
    steps: int,
    guidance_scale: float,
) -> torch.Tensor:
    """DDIM from each seed's own noise; classifier-free guidance against null_condition (L, D) when scale > 1."""
    ddim = DDIMScheduler.from_config(scheduler.config, clip_sample=False, set_alpha_to_one=False)  # as SD's
    ddim.set_timesteps(steps)
    latents = torch.stack([torch.randn(latent_shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    guided = guidance_scale > 1.0
    if guided:
        conditions = torch.cat([null_condition.expand_as(conditions), conditions])
    for t in ddim.timesteps:
        model_input = torch.cat([latents, latents]) if guided else latents
        eps = model(model_input, t, conditions).sample
        if guided:
            eps_uncond, eps_text = eps.chunk(2)
            eps = eps_uncond + guidance_scale * (eps_text - eps_uncond)
        latents = ddim.step(eps, t, latents).prev_sample
    return latents


def _boundaries(latents: torch.Tensor, config: WorldEfficiencyConfig, scheduler: DDPMScheduler) -> dict:
    schedule = DiscreteDDPMSchedule(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule=BetaSchedule.SCALED_LINEAR,
    )
    method, note = config.boundary_method, ""
    if method == "optimal-denoiser":
        try:
            found = optimal_denoiser_boundaries(latents, schedule, config.clustering).boundaries
        except NoBoundaryError as err:
            method, note = "uniform-log-snr", f"optimal-denoiser found no boundary ({err}); fell back"
    if method == "uniform-log-snr":
        found = uniform_log_snr_boundaries(schedule, 3, t_min=config.clustering.t_min)
    elif method == "uniform-t":
        found = uniform_t_boundaries(schedule, 3)
    return {
        "method": method,
        "note": note,
        "t": list(found.t),
        "log_snr": list(found.log_snr),
        "timesteps": list(model_timestep_boundaries(found, scheduler)),
    }


def _to_images(vae, latents: torch.Tensor) -> list[Image.Image]:
    from modm.world.vae import to_uint8

    with torch.no_grad():
        decoded = vae.decode(latents / vae.config.scaling_factor).sample  # SDXL's inverse: no shift
    return [Image.fromarray(a) for a in to_uint8(decoded)]


def _train_and_evaluate(name, model, scheduler, data, conditions, config, validation, evaluate, make_generator):
    trainer = StageSampledTrainer(model, scheduler, data, config.train, conditions=conditions)
    budget = config.budget_tflops * 1e12
    checkpoints = [budget * (i + 1) / config.num_evals for i in range(config.num_evals)]
    curve, train_s, eval_s = [], 0.0, 0.0
    for checkpoint in checkpoints:
        started = time.perf_counter()
        model.train()
        while trainer.total_flops < checkpoint:
            trainer.step()
        model.eval()
        train_s += time.perf_counter() - started
        started = time.perf_counter()
        with trainer.ema_weights() as ema_model:
            result = evaluate(name, make_generator(ema_model))
        losses = trainer.validation_losses(validation)
        eval_s += time.perf_counter() - started
        point = {
            "train_flops": trainer.total_flops,
            "steps": sum(trainer.steps_per_stage),
            "steps_per_stage": list(trainer.steps_per_stage),
            "stage_losses": losses,
            "judge": result.judge,
            "judge_shape_colour": result.judge["shape_colour"],
            "judge_all": result.judge["all"],
            "judge_colour": result.judge["colour"],
            "fid": result.fid,
            "fid_note": result.fid_note,
            "clip_score": result.clip_score,
            "train_wall_s": train_s,
            "eval_wall_s": eval_s,
        }
        logger.info(
            "%s: %.2f TFLOPs, %d steps, shape+colour %.3f, all %.3f, FID %s, CLIPScore %.2f, stage losses %s",
            name,
            point["train_flops"] / 1e12,
            point["steps"],
            point["judge_shape_colour"],
            point["judge_all"],
            "n/a" if point["fid"] is None else f"{point['fid']:.2f}",
            point["clip_score"],
            [round(v, 4) for v in losses],
        )
        curve.append(point)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "step_flops_per_stage": [trainer.step_flops(k) for k in range(len(trainer.ranges))],
        "stage_probabilities": trainer.probabilities.tolist(),
        "ema_decay": config.train.ema_decay,
        "ema_on": trainer.ema is not None,
        "curve": curve,
    }


def _compare(results: dict) -> dict:
    """Per metric: same quality = the worse of the two models' best values (a level both reach in the budget)."""
    out = {}
    for key, higher in METRICS.items():
        bests = []
        for name in ("unified", "multistage"):
            values = [p[key] for p in results[name]["curve"] if p[key] is not None]
            bests.append((max if higher else min)(values) if values else None)
        if None in bests:
            out[key] = {"target": None, "unified": None, "multistage": None, "multistage_over_unified": None}
            continue
        target = min(bests) if higher else max(bests)
        reach = {n: flops_to_reach_metric(results[n]["curve"], key, target, higher) for n in ("unified", "multistage")}
        out[key] = {
            "target": target,
            "higher_is_better": higher,
            "best": dict(zip(("unified", "multistage"), bests)),
            **reach,
            "multistage_over_unified": reach["multistage"] / reach["unified"],
        }
    return out


def run_world_efficiency_experiment(
    world_dir: str | Path, config: WorldEfficiencyConfig, device: torch.device | None = None
) -> dict:
    """Train a unified and a multi-stage U-Net on world latents for the same FLOPs; evaluate both over training."""
    from diffusers import AutoencoderKL

    from modm.embedding.hf_clip import HfClipEmbedder
    from modm.world.diffusion import world_latents
    from modm.world.eval import evaluate_generator, real_features
    from modm.world.format import validate_world_dir
    from modm.world.judge import Judge
    from modm.world.world import World

    device = device or torch.device("cpu")
    started = time.perf_counter()
    world_dir = Path(world_dir)
    manifest = validate_world_dir(world_dir, REQUIRED_COMPONENTS)
    component = {name: world_dir / manifest.components[name].path for name in REQUIRED_COMPONENTS}
    world = World(seed=manifest.seed, image_size=manifest.image_size)
    vae = AutoencoderKL.from_pretrained(str(component["vae"]), dtype=torch.float32).eval()
    text = WorldText(component["clip"], device)
    judge = Judge.load(component["judge"], device)
    scorer = HfClipEmbedder(component["clip_score"], device=device, batch_size=256)

    samples = world.samples(config.train_start, config.train_images)
    latents = world_latents(vae, np.stack([s.image for s in samples]), shifted=False)  # (N, C, h, w)
    captions = [s.prompt for s in samples]
    rng = np.random.default_rng(config.seed)
    unconditional = rng.random(len(captions)) < config.unconditional_fraction
    captions = ["" if drop else c for c, drop in zip(captions, unconditional)]
    conditions = text.encode(captions)  # (N, L, D)
    null_condition = text.encode([""])[0]  # (L, D)
    real = real_features(world, judge, config.real_images)
    setup_s = time.perf_counter() - started

    scheduler = DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule="scaled_linear",
        clip_sample=False,  # latents have unit variance: clipping x0 to [-1, 1] (the pixel default) would distort them
    )
    started = time.perf_counter()
    boundaries = _boundaries(latents, config, scheduler)
    boundaries["wall_s"] = time.perf_counter() - started
    if len(config.decoder_channels) != len(boundaries["timesteps"]) + 1:
        raise ValueError(f"{len(config.decoder_channels)} decoders for {len(boundaries['timesteps']) + 1} stages")
    ranges = stage_timestep_ranges(boundaries["timesteps"], config.num_train_timesteps)
    validation = make_stage_validation(
        latents, ranges, config.validation_per_stage, seed=config.seed + 1, conditions=conditions
    )
    latent_shape = tuple(latents.shape[1:])

    def make_generator(model):
        def generate(prompts, seeds):
            sampled = sample_world_latents(
                model,
                scheduler,
                text.encode(prompts),
                null_condition,
                seeds,
                latent_shape,
                config.sampling_steps,
                config.guidance_scale,
            )
            return _to_images(vae, sampled)

        return generate

    def evaluate(name, generator):
        return evaluate_generator(
            name, generator, world, judge, scorer, config.eval_samples, real=real, batch_size=config.sample_batch
        )

    common = dict(
        sample_size=latent_shape[-1],
        in_channels=latent_shape[0],
        out_channels=latent_shape[0],
        block_out_channels=config.encoder_channels,
        layers_per_block=1,
        norm_num_groups=config.norm_num_groups,
        cross_attention_dim=text.hidden,
        attention_head_dim=config.attention_head_dim,
    )
    results = {
        "config": config.model_dump(mode="json"),
        "world": str(world_dir),
        "data": {
            "train_indices": [config.train_start, config.train_start + config.train_images],
            "latent_shape": list(latent_shape),
            "unconditional_images": int(unconditional.sum()),
            "condition_shape": list(conditions.shape[1:]),
            "real_images_for_fid": len(real),
        },
        "boundaries": boundaries,
        "setup_wall_s": setup_s,
    }
    models = {
        "unified": dict(decoder_block_out_channels=(config.encoder_channels,), stage_boundaries=()),
        "multistage": dict(
            decoder_block_out_channels=config.decoder_channels, stage_boundaries=tuple(boundaries["timesteps"])
        ),
    }
    for name, layout in models.items():
        torch.manual_seed(config.seed)  # same encoder initialisation for both
        model = MultiStageUNet(**layout, **common).to(device)
        results[name] = _train_and_evaluate(
            name, model, scheduler, latents, conditions, config, validation, evaluate, make_generator
        )
    results["same_quality"] = _compare(results)
    return results


def format_world_table(results: dict) -> str:
    """Per model per checkpoint: TFLOPs, steps, stage losses, judge shape+colour and all, FID, CLIPScore."""
    b = results["boundaries"]
    lines = [
        f"boundaries ({b['method']}{'; ' + b['note'] if b['note'] else ''}): t={[round(v, 4) for v in b['t']]}, "
        f"DDPM timesteps {[round(v, 1) for v in b['timesteps']]}"
    ]
    for name in ("unified", "multistage"):
        run = results[name]
        lines.append(
            f"\n{name}: {run['parameters'] / 1e6:.2f} M params, GFLOPs per training step by stage "
            f"{[round(f / 1e9, 2) for f in run['step_flops_per_stage']]}, EMA decay {run['ema_decay']}"
        )
        lines.append(
            f"  {'TFLOPs':>7} {'steps':>6} {'loss s0':>8} {'loss s1':>8} {'loss s2':>8} {'sh+col':>6} {'all':>6} "
            f"{'colour':>6} {'FID':>8} {'CLIPScore':>9} {'train s':>8}"
        )
        for p in run["curve"]:
            losses = " ".join(f"{v:8.4f}" for v in p["stage_losses"])
            fid = "n/a" if p["fid"] is None else f"{p['fid']:.2f}"
            lines.append(
                f"  {p['train_flops'] / 1e12:7.2f} {p['steps']:6d} {losses} {p['judge_shape_colour']:6.3f} "
                f"{p['judge_all']:6.3f} {p['judge_colour']:6.3f} {fid:>8} {p['clip_score']:9.2f} "
                f"{p['train_wall_s']:8.1f}"
            )
    lines.append("\nsame quality (the worse model's best), TFLOPs to reach it:")
    for key, row in results["same_quality"].items():
        if row["target"] is None:
            lines.append(f"  {key}: not measured")
            continue
        lines.append(
            f"  {key} {'≥' if row['higher_is_better'] else '≤'} {row['target']:.3f}: unified "
            f"{row['unified'] / 1e12:.2f}, multistage {row['multistage'] / 1e12:.2f} -> multistage/unified "
            f"{row['multistage_over_unified']:.2f}"
        )
    return "\n".join(lines)
