"""The tiny offline model zoo: randomly initialised models of the real classes, built from configs.

Each family has one factory returning the components dict that goes straight into its diffusers pipeline (diffusers'
`get_dummy_components` pattern), seeded before every component so the zoo is bit-for-bit reproducible. Sizes are
chosen so that the large model's cost per denoising step is about 5.5x the small one's, the SD3.5-Large : SDXL ratio
on MI210 (91.5 s vs 16.5 s per 50-step image).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from modm.models.tokenizer import build_clip_tokenizer

TARGET_STEP_COST_RATIO = 91.5 / 16.5  # SD3.5-Large : SDXL per 50-step image on MI210 (MoDM)
ZOO_SEED = 0
# Bump when a factory below changes, so that zoos built by older code are rebuilt (see `zoo_is_current`).
ZOO_VERSION = 2


@dataclass(frozen=True)
class TinyZooPaths:
    root: Path

    @property
    def large(self) -> Path:
        return self.root / "large"

    @property
    def small(self) -> Path:
        return self.root / "small"

    @property
    def clip(self) -> Path:
        return self.root / "clip"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def manifest(self) -> Path:
        return self.root / "zoo.json"


def _clip_text_config(projection_dim: int | None, hidden: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        layer_norm_eps=1e-5,
        hidden_act="gelu",
        projection_dim=projection_dim or hidden,
    )


def tiny_vae(latent_channels: int, sample_size: int = 256, **options):
    """The zoo's VAE shape (8x downsampling, few channels), shared by both pipelines and benchmarks/parallel_bench.py;
    `options`: AutoencoderKL's other arguments (factors, quant convs). Seeded by the caller."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        block_out_channels=(16, 32, 32, 32),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=8,
        sample_size=sample_size,
        **options,
    )


def large_components(tokenizer) -> dict:
    """SD3-style: SD3Transformer2DModel + FlowMatchEulerDiscreteScheduler + two CLIP encoders (no T5), 8x VAE."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(ZOO_SEED)
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=8,
        attention_head_dim=32,
        num_attention_heads=6,
        joint_attention_dim=64,
        caption_projection_dim=192,
        pooled_projection_dim=64,
        pos_embed_max_size=96,
    )
    torch.manual_seed(ZOO_SEED)
    vae = tiny_vae(
        16,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
        force_upcast=False,
    )
    torch.manual_seed(ZOO_SEED)
    text_encoder = CLIPTextModelWithProjection(_clip_text_config(projection_dim=32))
    torch.manual_seed(ZOO_SEED + 1)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_text_config(projection_dim=32))
    return {
        "transformer": transformer,
        "vae": vae,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": tokenizer,
        "text_encoder_3": None,
        "tokenizer_3": None,
    }


def small_components(tokenizer) -> dict:
    """SDXL-style: UNet2DConditionModel with text_time embeddings, two CLIP encoders, 8x VAE, Euler scheduler."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(ZOO_SEED)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 1),
        cross_attention_dim=64,
        norm_num_groups=8,
        # SDXL's micro-conditioning: 6 size/crop ids embedded at 8 dims + the pooled text embedding (32).
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,
    )
    torch.manual_seed(ZOO_SEED)
    vae = tiny_vae(4, scaling_factor=0.13025, force_upcast=False)  # fp32 already: no per-call upcast
    torch.manual_seed(ZOO_SEED)
    text_encoder = CLIPTextModel(_clip_text_config(projection_dim=None))
    torch.manual_seed(ZOO_SEED + 1)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_text_config(projection_dim=32))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
    )
    return {
        "unet": unet,
        "vae": vae,
        "scheduler": scheduler,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": tokenizer,
        "image_encoder": None,
        "feature_extractor": None,
    }


# open_clip model config: a 2-layer ViT with 64-d towers (open_clip's own config format).
TINY_OPEN_CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}


def save_tiny_open_clip(out_dir: str | Path) -> Path:
    """Write a random tiny open_clip CLIP in open_clip's local-dir format; load it as 'local-dir:<out_dir>'."""
    import open_clip
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(ZOO_SEED)
    model = open_clip.CLIP(**TINY_OPEN_CLIP_CONFIG)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out_dir / "open_clip_model.safetensors")
    preprocess = {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}
    (out_dir / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_OPEN_CLIP_CONFIG, "preprocess_cfg": preprocess}, indent=2), encoding="utf-8"
    )
    return out_dir


def build_tiny_zoo(root: str | Path) -> TinyZooPaths:
    """Build and save_pretrained the whole tiny zoo under root (deterministic, offline)."""
    from diffusers import StableDiffusion3Pipeline, StableDiffusionXLPipeline

    paths = TinyZooPaths(Path(root))
    paths.root.mkdir(parents=True, exist_ok=True)
    tokenizer = build_clip_tokenizer(paths.tokenizer / "bpe")
    tokenizer.save_pretrained(paths.tokenizer)
    StableDiffusion3Pipeline(**large_components(tokenizer)).save_pretrained(paths.large)
    StableDiffusionXLPipeline(**small_components(tokenizer)).save_pretrained(paths.small)
    save_tiny_open_clip(paths.clip)
    paths.manifest.write_text(
        json.dumps(
            {
                "large": str(paths.large),
                "small": str(paths.small),
                "clip": f"local-dir:{paths.clip}",
                "tokenizer": str(paths.tokenizer),
                "seed": ZOO_SEED,
                "version": ZOO_VERSION,
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    return paths


def zoo_is_current(root: str | Path) -> bool:
    """Whether root holds a complete zoo built by this version of the factories."""
    paths = TinyZooPaths(Path(root))
    try:
        manifest = json.loads(paths.manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return manifest.get("version") == ZOO_VERSION and all(
        p.is_dir() for p in (paths.large, paths.small, paths.clip, paths.tokenizer)
    )
