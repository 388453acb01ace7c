"""Train a text-conditioned MultiStageUNet on digits inside a tiny Stable Diffusion pipeline, ready to serve.

The digits (prompts "a handwritten digit N") are encoded by the pipeline's own VAE and text encoder, so the unet
is fitted in exactly the latent and text spaces it is served with. The VAE and text encoder stay as built
(randomly initialised, like the rest of the tiny zoo): decoded pictures will not look like digits, but the
denoiser is a trained model of that latent distribution, stage-sampled like any other multi-stage model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionPipeline

from modm.multistage.digits import load_digits_images
from modm.multistage.serving import TinyStableDiffusionConfig, build_multistage_sd_pipeline
from modm.multistage.training import StageSampledTrainer, TrainConfig, make_stage_validation
from modm.multistage.unet import MultiStageUNet

__all__ = ["digit_prompt", "train_text_conditioned_digits"]

ENCODE_BATCH = 128
UNCONDITIONAL_FRACTION = 0.1  # images trained with the empty prompt, so classifier-free guidance has a target


def digit_prompt(label: int) -> str:
    return f"a handwritten digit {label}"


@torch.no_grad()
def _encode_digits(pipe: StableDiffusionPipeline, images: torch.Tensor, scale: float) -> torch.Tensor:
    pixels = pipe.unet.config.sample_size * pipe.vae_scale_factor
    rgb = F.interpolate(images, size=(pixels, pixels), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return torch.cat(
        [pipe.vae.encode(rgb[i : i + ENCODE_BATCH]).latent_dist.mean * scale for i in range(0, len(rgb), ENCODE_BATCH)]
    )


def train_text_conditioned_digits(
    unet: MultiStageUNet,
    steps: int,
    *,
    train_config: TrainConfig | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> tuple[StableDiffusionPipeline, list[float], list[float]]:
    """Train unet for steps on digit latents; returns (pipeline, per-stage losses before, after).

    The pipeline's VAE gets a scaling factor that gives the digit latents unit variance, as SD's 0.18215 does for
    its VAE.
    """
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    train_config = train_config or TrainConfig(batch_size=32, seed=seed)
    images, labels = load_digits_images(8, limit=limit)
    probe = build_multistage_sd_pipeline(unet, TinyStableDiffusionConfig(seed=seed))
    raw_latents = _encode_digits(probe, images, 1.0)  # (N, 4, h, w)
    scale = 1.0 / float(raw_latents.std())
    # Same seed, so the same VAE weights; only the configured latent scale differs.
    pipe = build_multistage_sd_pipeline(unet, TinyStableDiffusionConfig(seed=seed, vae_scaling_factor=scale))
    latents = raw_latents * scale

    with torch.no_grad():
        prompts = [digit_prompt(n) for n in range(10)] + [""]
        embeddings = pipe.encode_prompt(prompts, torch.device("cpu"), 1, False)[0]  # (11, 77, D)
    generator = torch.Generator().manual_seed(seed)
    prompt_index = labels.clone()
    prompt_index[torch.rand(len(labels), generator=generator) < UNCONDITIONAL_FRACTION] = 10
    conditions = embeddings[prompt_index]  # (N, 77, D)

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    trainer = StageSampledTrainer(unet, scheduler, latents, train_config, conditions=conditions)
    validation = make_stage_validation(latents, trainer.ranges, per_stage=64, seed=seed + 1, conditions=conditions)
    before = trainer.validation_losses(validation)
    unet.train()
    for _ in range(steps):
        trainer.step()
    unet.eval()
    return pipe, before, trainer.validation_losses(validation)
