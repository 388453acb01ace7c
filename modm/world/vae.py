"""The world's VAE: a diffusers `AutoencoderKL` for 32x32 images, trained here, shared by the large and small models.

Its latents are normalised as each pipeline class does: SD3 with `(z - shift_factor) * scaling_factor`, SDXL with
`z * scaling_factor` (SDXL's pipelines take a mean only as a 4-channel `latents_mean`, `view(1, 4, 1, 1)`, and the
world's latents have 8 channels, so none is set). Each denoiser is trained on its own pipeline's normalisation
(`modm.world.diffusion.normalise_latents`). Both factors are computed from the trained encoder's latents, as SD3 and
SDXL computed theirs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

ProgressFn = Callable[[int, float], None]  # (step, loss) after every step, as the build's progress bars take


@dataclass(frozen=True)
class VaeTrainSpec:
    latent_channels: int = 4
    # 2 blocks: 32x32 pixels -> 16x16 latents. Measured: 3 blocks (8x8x8 latents) after the same training read
    # 22.0 dB PSNR with colours shifted (red as orange); 16x16x4 keeps colour and shape.
    block_out_channels: tuple[int, ...] = (16, 32)
    train_images: int = 8_000
    steps: int = 400
    batch_size: int = 16
    learning_rate: float = 2e-3
    kl_weight: float = 1e-6  # as SD's VAE: a nearly deterministic autoencoder, latents kept bounded
    seed: int = 0

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def to_json(self) -> dict:
        return asdict(self)


def build_vae(spec: VaeTrainSpec, *, shift_factor: float = 0.0, scaling_factor: float = 1.0):
    from diffusers import AutoencoderKL

    n = len(spec.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=spec.latent_channels,
        block_out_channels=spec.block_out_channels,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        norm_num_groups=16,
        sample_size=32,
        use_quant_conv=False,
        use_post_quant_conv=False,
        force_upcast=False,  # fp32 on CPU already; no per-call upcast
        **latent_normalisation(shift_factor, scaling_factor),
    )


def latent_normalisation(shift_factor: float, scaling_factor: float) -> dict:
    """VAE config entries of the world's latent normalisation (no `latents_mean`/`latents_std`: see the module doc)."""
    return {
        "shift_factor": float(shift_factor),
        "scaling_factor": float(scaling_factor),
        "latents_mean": None,
        "latents_std": None,
    }


def pixels(images: np.ndarray) -> torch.Tensor:
    """(n, h, w, 3) uint8 -> (n, 3, h, w) float in [-1, 1], the range diffusers' VAEs work in."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _lr_at(step: int, total: int, peak: float, warmup: int = 30) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_vae(images: np.ndarray, spec: VaeTrainSpec, *, progress: ProgressFn | None = None):
    """Train an AutoencoderKL on (n, 32, 32, 3) uint8 images; returns it in eval mode with its latent factors set."""
    torch.manual_seed(spec.seed)
    vae = build_vae(spec)
    data = pixels(images)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=spec.learning_rate, weight_decay=0.0)
    order = torch.Generator().manual_seed(spec.seed)
    vae.train()
    for step in range(spec.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, spec.steps, spec.learning_rate)
        batch = data[torch.randint(len(data), (spec.batch_size,), generator=order)]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator=order)).sample
        mse = F.mse_loss(recon, batch)
        loss = mse + 0.5 * F.l1_loss(recon, batch) + spec.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        if progress is not None:
            progress(step, mse.item())
    vae.eval()
    shift, scale = latent_factors(vae, data[: min(len(data), 4096)])
    vae.register_to_config(**latent_normalisation(shift, scale))
    return vae


@torch.no_grad()
def encode_latents(vae, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Unnormalised posterior means (deterministic)."""
    return torch.cat([vae.encode(x[i : i + batch_size]).latent_dist.mode() for i in range(0, len(x), batch_size)])


@torch.no_grad()
def latent_factors(vae, x: torch.Tensor) -> tuple[float, float]:
    """(shift, scale) with (latent - shift) * scale of zero mean and unit variance, as SD3 set its factors."""
    latents = encode_latents(vae, x)
    shift = float(latents.mean())
    return shift, float(1.0 / (latents - shift).std())


@torch.no_grad()
def reconstruct(vae, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    return torch.cat(
        [vae.decode(vae.encode(x[i : i + batch_size]).latent_dist.mode()).sample for i in range(0, len(x), batch_size)]
    ).clamp(-1, 1)


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of two [-1, 1] batches."""
    mse = float(F.mse_loss((x + 1) / 2, (y + 1) / 2))
    return 10 * math.log10(1.0 / max(mse, 1e-12))
