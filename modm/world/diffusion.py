"""Training of the world's diffusion models: conditioning, the two objectives (SD3's and SDXL's), EMA, the loop.

Captions are encoded once by the pipeline's own `encode_prompt` (frozen text encoders), so the model is trained on
exactly the embeddings the pipeline feeds it at inference; the unconditional embedding for classifier-free guidance
is the pipeline's own negative (SD3: the encoding of ""; SDXL: zeros, `force_zeros_for_empty_prompt`). Latents are
the VAE's posterior means, normalised as the pipeline class normalises them (SD3 with the shift, SDXL without).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from modm.world.vae import encode_latents, pixels

ProgressFn = Callable[[int, float], None]  # (step, loss) after every step


@dataclass(frozen=True)
class DiffusionTrainSpec:
    steps: int
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    caption_dropout: float = 0.1  # classifier-free guidance: this fraction trains unconditionally
    ema_decay: float = 0.999  # the cap of diffusers' EMA warm-up schedule
    seed: int = 0

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class TrainingSet:
    """Normalised latents and their captions' conditioning, row-aligned."""

    latents: torch.Tensor  # (n, C, h, w)
    prompt_embeds: torch.Tensor  # (n, L, D)
    pooled: torch.Tensor  # (n, P)
    null_prompt_embeds: torch.Tensor  # (L, D): the unconditional input
    null_pooled: torch.Tensor  # (P,)

    def __len__(self) -> int:
        return len(self.latents)


def normalise_latents(vae, latents: torch.Tensor, *, shifted: bool) -> torch.Tensor:
    """What the pipeline feeds its denoiser: SD3's (z - shift) * scale (`shifted`), SDXL's z * scale (decoding
    inverts each; see modm.world.vae)."""
    shift = (vae.config.shift_factor or 0.0) if shifted else 0.0
    return (latents - shift) * vae.config.scaling_factor


@torch.no_grad()
def world_latents(vae, images: np.ndarray, *, shifted: bool) -> torch.Tensor:
    return normalise_latents(vae, encode_latents(vae, pixels(images)), shifted=shifted)


def _encode_kwargs(pipe) -> dict:
    import inspect

    params = inspect.signature(pipe.encode_prompt).parameters
    kwargs = {"device": torch.device("cpu"), "num_images_per_prompt": 1, "do_classifier_free_guidance": False}
    if "prompt_3" in params:  # SD3: the (absent) T5's token count; see pipelines.WORLD_T5_TOKENS
        from modm.world.pipelines import WORLD_T5_TOKENS

        kwargs.update(prompt_2=None, prompt_3=None, max_sequence_length=WORLD_T5_TOKENS)
    return kwargs


@torch.no_grad()
def encode_captions(pipe, captions: list[str], batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds, pooled) exactly as `pipe.__call__` computes them for these prompts."""
    kwargs = _encode_kwargs(pipe)
    embeds, pooled = [], []
    for i in range(0, len(captions), batch_size):
        out = pipe.encode_prompt(prompt=captions[i : i + batch_size], **kwargs)
        embeds.append(out[0].float())
        pooled.append(out[2].float())
    return torch.cat(embeds), torch.cat(pooled)


@torch.no_grad()
def null_condition(pipe) -> tuple[torch.Tensor, torch.Tensor]:
    """The pipeline's own unconditional input for an empty negative prompt."""
    embeds, pooled = encode_captions(pipe, [""])
    if getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        return torch.zeros_like(embeds[0]), torch.zeros_like(pooled[0])
    return embeds[0], pooled[0]


def training_set(pipe, latents: torch.Tensor, captions: list[str]) -> TrainingSet:
    embeds, pooled = encode_captions(pipe, captions)
    null_embeds, null_pooled = null_condition(pipe)
    return TrainingSet(
        latents=latents, prompt_embeds=embeds, pooled=pooled, null_prompt_embeds=null_embeds, null_pooled=null_pooled
    )


class RectifiedFlowObjective:
    """SD3's: x_t = (1 - s) x0 + s noise with s logit-normal (mean 0, std 1), the model predicts noise - x0."""

    def __init__(self, logit_mean: float = 0.0, logit_std: float = 1.0):
        self.logit_mean, self.logit_std = logit_mean, logit_std

    def loss(self, model, x0, embeds, pooled, generator: torch.Generator) -> torch.Tensor:
        from diffusers.training_utils import compute_density_for_timestep_sampling

        n = x0.shape[0]
        sigmas = compute_density_for_timestep_sampling(
            "logit_normal", n, logit_mean=self.logit_mean, logit_std=self.logit_std, generator=generator
        )
        sigmas = sigmas.view(n, 1, 1, 1)
        noise = torch.randn(x0.shape, generator=generator)
        noisy = (1.0 - sigmas) * x0 + sigmas * noise
        # FlowMatchEulerDiscreteScheduler's timesteps are sigma * num_train_timesteps (1000).
        pred = model(
            hidden_states=noisy,
            timestep=sigmas.view(n) * 1000.0,
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
        return F.mse_loss(pred, noise - x0)


class DdpmObjective:
    """SDXL's: the DDPM forward process on the scheduler's betas, the model predicts what the scheduler's
    `prediction_type` names (the noise, or v = sqrt(a) noise - sqrt(1 - a) x0); SDXL's micro-conditioning ids fixed
    to the serving size (original = target = image size, no crop)."""

    def __init__(self, scheduler_config, image_size: int):
        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler.from_config(scheduler_config)
        self.prediction_type = self.scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type {self.prediction_type!r}: the world trains epsilon or v_prediction")
        self.time_ids = torch.tensor([[image_size, image_size, 0, 0, image_size, image_size]], dtype=torch.float32)

    def loss(self, model, x0, embeds, pooled, generator: torch.Generator) -> torch.Tensor:
        n = x0.shape[0]
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (n,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        noisy = self.scheduler.add_noise(x0, noise, t)
        pred = model(
            noisy,
            t,
            encoder_hidden_states=embeds,
            return_dict=False,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": self.time_ids.expand(n, -1)},
        )[0]
        target = noise if self.prediction_type == "epsilon" else self.scheduler.get_velocity(x0, noise, t)
        return F.mse_loss(pred, target)


def _lr_at(step: int, spec: DiffusionTrainSpec) -> float:
    if step < spec.warmup_steps:
        return spec.learning_rate * (step + 1) / spec.warmup_steps
    progress = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
    return spec.learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_denoiser(
    model, objective, data: TrainingSet, spec: DiffusionTrainSpec, *, progress: ProgressFn | None = None
) -> float:
    """Train `model` in place; at the end its weights are the EMA weights. Returns the mean loss of the last 10%."""
    from diffusers.training_utils import EMAModel

    generator = torch.Generator().manual_seed(spec.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=spec.weight_decay)
    ema = EMAModel(model.parameters(), decay=spec.ema_decay, use_ema_warmup=True, power=2 / 3)
    model.train()
    tail: list[float] = []
    for step in range(spec.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, spec)
        rows = torch.randint(len(data), (spec.batch_size,), generator=generator)
        embeds, pooled = data.prompt_embeds[rows].float(), data.pooled[rows].float()
        drop = torch.rand(spec.batch_size, generator=generator) < spec.caption_dropout
        embeds[drop] = data.null_prompt_embeds.float()
        pooled[drop] = data.null_pooled.float()
        loss = objective.loss(model, data.latents[rows], embeds, pooled, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        ema.step(model.parameters())
        if step >= int(spec.steps * 0.9):
            tail.append(loss.item())
        if progress is not None:
            progress(step, loss.item())
    ema.copy_to(model.parameters())
    model.eval()
    return float(np.mean(tail)) if tail else float("nan")
