"""Unified vs multi-stage U-Net on digits at a fixed training-FLOPs budget: loss per stage and FID against FLOPs."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler
from pydantic import BaseModel, ConfigDict, Field

from modm.multistage.clustering import ClusteringConfig, optimal_denoiser_boundaries
from modm.multistage.digits import load_digits_images
from modm.multistage.quality import classifier_fid, fit_digit_classifier
from modm.multistage.scheduler_steps import model_timestep_boundaries
from modm.multistage.schedules import DiscreteDDPMSchedule
from modm.multistage.training import StageSampledTrainer, TrainConfig, make_stage_validation, stage_timestep_ranges
from modm.multistage.unet import MultiStageUNet

__all__ = ["EfficiencyConfig", "flops_to_reach", "flops_to_reach_metric", "run_efficiency_experiment", "sample_digits"]

logger = logging.getLogger(__name__)


class EfficiencyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int = Field(default=16, ge=8, description="Digits are upscaled from 8 px to this size.")
    budget_tflops: float = Field(default=20.0, gt=0, description="Training budget per model, in TFLOPs.")
    num_evals: int = Field(default=5, ge=1, description="Evaluations (FID, stage losses) spread over the budget.")
    fid_samples: int = Field(default=500, ge=10, description="Generated digits per FID evaluation.")
    sampling_steps: int = Field(default=20, gt=0, description="DDIM steps per generated digit.")
    validation_per_stage: int = Field(default=256, gt=0, description="Fixed validation samples per stage.")
    encoder_channels: tuple[int, ...] = Field(default=(32, 64), description="Shared encoder widths (both models).")
    decoder_channels: tuple[tuple[int, ...], ...] = Field(
        default=((48, 96), (32, 64), (8, 16)),
        description="Multi-stage decoder widths, low-noise stage first (paper ratio 192/128/16 of 128).",
    )
    norm_num_groups: int = Field(default=8, gt=0, description="GroupNorm groups of both models.")
    num_train_timesteps: int = Field(default=1000, ge=2, description="DDPM training timesteps (linear betas).")
    clustering: ClusteringConfig = Field(default_factory=ClusteringConfig, description="Boundary search.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimiser and stage sampling.")
    classifier_steps: int = Field(default=400, gt=0, description="Training steps of the FID feature classifier.")
    seed: int = Field(default=0, description="Seed of model initialisation and evaluation sampling.")


def sample_digits(model: MultiStageUNet, scheduler: DDPMScheduler, num: int, steps: int, seed: int) -> torch.Tensor:
    """num digits (num, 1, S, S) in [-1, 1] from a standard diffusers DDIMPipeline."""
    pipe = DDIMPipeline(unet=model, scheduler=DDIMScheduler.from_config(scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        batch_size=num, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), output_type="np"
    ).images  # (num, S, S, 1) in [0, 1]
    return torch.from_numpy(images).permute(0, 3, 1, 2) * 2.0 - 1.0


def flops_to_reach_metric(curve: list[dict], key: str, target: float, higher_is_better: bool) -> float | None:
    """Training FLOPs of the first evaluation whose `key` reaches target (None if never)."""
    for point in curve:
        value = point[key]
        if value is not None and (value >= target if higher_is_better else value <= target):
            return point["train_flops"]
    return None


def flops_to_reach(curve: list[dict], target_fid: float) -> float | None:
    """Training FLOPs of the first evaluation whose FID is at or below target_fid (None if never)."""
    return flops_to_reach_metric(curve, "fid", target_fid, higher_is_better=False)


def _train_and_evaluate(name, model, scheduler, data, config, validation, classifier, reference, save_dir):
    trainer = StageSampledTrainer(model, scheduler, data, config.train)
    budget = config.budget_tflops * 1e12
    checkpoints = [budget * (i + 1) / config.num_evals for i in range(config.num_evals)]
    curve, started = [], time.perf_counter()
    for checkpoint in checkpoints:
        while trainer.total_flops < checkpoint:
            trainer.step()
        generated = sample_digits(model, scheduler, config.fid_samples, config.sampling_steps, config.seed)
        point = {
            "train_flops": trainer.total_flops,
            "steps": sum(trainer.steps_per_stage),
            "steps_per_stage": list(trainer.steps_per_stage),
            "stage_losses": trainer.validation_losses(validation),
            "fid": classifier_fid(classifier, reference, generated),
            "wall_s": time.perf_counter() - started,
        }
        logger.info(
            "%s: %.2f TFLOPs, FID %.3f, stage losses %s",
            name,
            point["train_flops"] / 1e12,
            point["fid"],
            [round(v, 4) for v in point["stage_losses"]],
        )
        curve.append(point)
    if save_dir is not None:  # a DDIMPipeline directory: DiffusionPipeline.from_pretrained loads it back
        DDIMPipeline(unet=model, scheduler=DDIMScheduler.from_config(scheduler.config)).save_pretrained(
            Path(save_dir) / name
        )
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "step_flops_per_stage": [trainer.step_flops(k) for k in range(len(trainer.ranges))],
        "stage_probabilities": trainer.probabilities.tolist(),
        "curve": curve,
    }


def run_efficiency_experiment(config: EfficiencyConfig, save_dir: str | Path | None = None) -> dict:
    """Cluster the digits' timesteps, then train a unified and a multi-stage U-Net for the same FLOPs budget.

    With save_dir, the trained models are saved as DDIMPipeline directories save_dir/unified, save_dir/multistage.
    """
    data, labels = load_digits_images(config.image_size)
    scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule="linear")
    schedule = DiscreteDDPMSchedule(num_train_timesteps=config.num_train_timesteps)
    clustering = optimal_denoiser_boundaries(data, schedule, config.clustering)
    boundaries = model_timestep_boundaries(clustering.boundaries, scheduler)
    if len(config.decoder_channels) != len(boundaries) + 1:
        raise ValueError(f"{len(config.decoder_channels)} decoders for {len(boundaries) + 1} stages")

    classifier, accuracy = fit_digit_classifier(data, labels, steps=config.classifier_steps, seed=config.seed)
    # Real-vs-real FID between two halves: the floor the generated samples can approach.
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(config.seed))
    floor_fid = classifier_fid(classifier, data[order[: len(data) // 2]], data[order[len(data) // 2 :]])
    validation = make_stage_validation(
        data,
        stage_timestep_ranges(boundaries, config.num_train_timesteps),
        config.validation_per_stage,
        seed=config.seed + 1,
    )

    common = dict(
        sample_size=config.image_size,
        in_channels=1,
        out_channels=1,
        block_out_channels=config.encoder_channels,
        layers_per_block=1,
        norm_num_groups=config.norm_num_groups,
    )
    torch.manual_seed(config.seed)
    unified = MultiStageUNet(decoder_block_out_channels=(config.encoder_channels,), stage_boundaries=(), **common)
    torch.manual_seed(config.seed)
    multistage = MultiStageUNet(
        decoder_block_out_channels=config.decoder_channels, stage_boundaries=boundaries, **common
    )
    results = {
        "config": config.model_dump(mode="json"),
        "boundaries_t": list(clustering.boundaries.t),
        "boundaries_timesteps": list(boundaries),
        "classifier_accuracy": accuracy,
        "real_vs_real_fid": floor_fid,
        "unified": _train_and_evaluate(
            "unified", unified, scheduler, data, config, validation, classifier, data, save_dir
        ),
        "multistage": _train_and_evaluate(
            "multistage", multistage, scheduler, data, config, validation, classifier, data, save_dir
        ),
    }
    # Same quality = the worse of the two models' best FIDs, a level both runs reach within the budget.
    target = max(min(p["fid"] for p in results[name]["curve"]) for name in ("unified", "multistage"))
    unified_flops = flops_to_reach(results["unified"]["curve"], target)
    multistage_flops = flops_to_reach(results["multistage"]["curve"], target)
    results["target_fid"] = target
    results["flops_to_target"] = {
        "unified": unified_flops,
        "multistage": multistage_flops,
        "multistage_over_unified": multistage_flops / unified_flops,
    }
    return results
