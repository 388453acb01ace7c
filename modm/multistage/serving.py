"""Package a MultiStageUNet as the `unet` of a StableDiffusionPipeline, so the serving system loads it like any model.

The serving system calls `DiffusionPipeline.from_pretrained(path)`; `save_pretrained` records the unet as
["modm.multistage.unet", "MultiStageUNet"] in model_index.json, and diffusers resolves that module from
`sys.modules`, so the loading process must `import modm.multistage` first (diffusers refuses to import modules a
repository names, by design).

The text encoder, tokenizer and VAE are tiny and randomly initialised (built offline from configs, like the rest of
the tiny zoo); only the unet is meant to carry trained weights.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
from pydantic import BaseModel, ConfigDict, Field
from transformers import CLIPTextConfig, CLIPTextModel

from modm.models.tokenizer import CLIP_CONTEXT_LENGTH, CLIP_VOCAB_SIZE, build_clip_tokenizer
from modm.multistage.unet import MultiStageUNet

__all__ = [
    "TinyStableDiffusionConfig",
    "build_multistage_sd_pipeline",
    "save_multistage_sd_pipeline",
    "tiny_text_conditioned_unet",
]

CLIP_BOS_ID, CLIP_EOS_ID = 49406, 49407


class TinyStableDiffusionConfig(BaseModel):
    """Sizes of the offline text encoder and VAE that surround the MultiStageUNet."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text_hidden_size: int = Field(default=32, gt=0, description="CLIP text width = the unet's cross_attention_dim.")
    text_layers: int = Field(default=2, gt=0, description="CLIP text transformer layers.")
    text_heads: int = Field(default=4, gt=0, description="CLIP text attention heads.")
    vae_block_out_channels: tuple[int, ...] = Field(
        default=(32, 32, 64, 64), description="VAE widths; n levels give a 2^(n-1) latent downscale (SD: 8)."
    )
    latent_channels: int = Field(default=4, gt=0, description="VAE latent channels = the unet's in/out channels.")
    vae_scaling_factor: float = Field(
        default=0.18215, gt=0, description="Latent scale applied by the pipeline (SD's value by default)."
    )
    beta_start: float = Field(default=0.00085, gt=0, description="Scheduler β start (SD's scaled-linear).")
    beta_end: float = Field(default=0.012, gt=0, description="Scheduler β end (SD's scaled-linear).")
    seed: int = Field(default=0, description="Seed for the random initialisation of each component.")


def tiny_text_conditioned_unet(
    stage_boundaries=(333.0, 666.0),
    *,
    cross_attention_dim: int = 32,
    latent_channels: int = 4,
    sample_size: int = 8,
    seed: int = 0,
) -> MultiStageUNet:
    """A small three-stage MultiStageUNet with cross-attention, sized like the tiny zoo's SD unet."""
    torch.manual_seed(seed)
    return MultiStageUNet(
        sample_size=sample_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        block_out_channels=(32, 64),
        decoder_block_out_channels=((48, 96), (32, 64), (16, 32)),
        stage_boundaries=tuple(stage_boundaries),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
    )


def build_multistage_sd_pipeline(
    unet: MultiStageUNet, config: TinyStableDiffusionConfig | None = None
) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline around unet, with a tiny CLIP text encoder, offline tokenizer, VAE and DDIM."""
    config = config or TinyStableDiffusionConfig()
    if unet.config.cross_attention_dim != config.text_hidden_size:
        raise ValueError(
            f"unet cross_attention_dim={unet.config.cross_attention_dim} must equal the text "
            f"encoder width text_hidden_size={config.text_hidden_size}"
        )
    if unet.config.in_channels != config.latent_channels or unet.config.out_channels != config.latent_channels:
        raise ValueError(
            f"unet channels in={unet.config.in_channels}, out={unet.config.out_channels} must equal "
            f"latent_channels={config.latent_channels}"
        )

    torch.manual_seed(config.seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=config.text_hidden_size,
            intermediate_size=2 * config.text_hidden_size,
            num_hidden_layers=config.text_layers,
            num_attention_heads=config.text_heads,
            vocab_size=CLIP_VOCAB_SIZE,
            max_position_embeddings=CLIP_CONTEXT_LENGTH,
            bos_token_id=CLIP_BOS_ID,
            eos_token_id=CLIP_EOS_ID,
            pad_token_id=CLIP_EOS_ID,
        )
    )
    with tempfile.TemporaryDirectory() as bpe_dir:  # the tokenizer keeps its vocabulary in memory
        tokenizer = build_clip_tokenizer(bpe_dir)
    torch.manual_seed(config.seed)
    levels = len(config.vae_block_out_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=config.vae_block_out_channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=config.latent_channels,
        norm_num_groups=min(config.vae_block_out_channels),
        scaling_factor=config.vae_scaling_factor,
        sample_size=unet.config.sample_size * 2 ** (levels - 1),
    )
    scheduler = DDIMScheduler(
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_multistage_sd_pipeline(
    out_dir: str | Path, unet: MultiStageUNet, config: TinyStableDiffusionConfig | None = None
) -> Path:
    """Write the pipeline with save_pretrained; the directory is a model spec `source` for the serving system."""
    out_dir = Path(out_dir)
    build_multistage_sd_pipeline(unet, config).save_pretrained(out_dir)
    return out_dir
