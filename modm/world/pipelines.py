"""The world's diffusion pipelines: the denoisers' configs and their assembly into stock diffusers pipelines.

- large: `StableDiffusion3Pipeline` — `SD3Transformer2DModel`, `FlowMatchEulerDiscreteScheduler`, the world CLIP's
  text tower as both CLIP encoders (no T5), the world VAE.
- small and small2: `StableDiffusionXLPipeline` — `UNet2DConditionModel` with SDXL's text_time embeddings,
  `EulerDiscreteScheduler` on SDXL's betas rescaled to zero terminal SNR with v-prediction (`SMALL_SCHEDULER`), the
  world CLIP's text tower as both encoders, the same VAE. Their
  img2img twin is `StableDiffusionXLImg2ImgPipeline.from_pipe`.

Both use one text tower twice (concatenated, as SD3/SDXL concatenate their two CLIPs): the second CLIP of the world
is kept for grading (CLIPScore), so the models are not conditioned on the model that scores them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# The absent T5 still contributes this many (zero) tokens to SD3's joint attention: the pipeline pads with
# `max_sequence_length` zero rows. The large model is trained with this count, so serve it with the same
# (`ModelSpec.max_sequence_length`; `world_model_spec` sets it).
WORLD_T5_TOKENS = 1
# The pipelines' CLIP token count: the longest world caption is 25 tokens with BOS and EOS, so 26 loses nothing (the
# causal text tower's states and its EOS pooling do not depend on the padding after), and joint attention runs over
# 26 + 1 text tokens instead of the CLIP's 40 + 1 (measured: 1.23 -> 0.95 s per large training step of 64).
PIPELINE_TEXT_TOKENS = 26
# The world's schedulers: SD3 at small resolution uses shift 1 (the paper's shift grows with resolution).
LARGE_SHIFT = 1.0
MODEL_CARD = "world_model.json"


@dataclass(frozen=True)
class LargeSpec:
    """SD3Transformer2DModel size (on 16x16 latents, patch 2: 64 image tokens)."""

    num_layers: int = 6
    num_attention_heads: int = 4
    attention_head_dim: int = 32


@dataclass(frozen=True)
class SmallSpec:
    """UNet2DConditionModel size (SDXL layout: with two or more levels, no attention in the first)."""

    block_out_channels: tuple[int, ...] = (32, 64)
    heads: tuple[int, ...] = (2, 4)
    time_embed_dim: int = 16
    # SDXL's cross-attention mid block; without it the UNet is a few modules shorter, which at these sizes (where a
    # step's cost is mostly per-module overhead) is most of what makes a small model cheap.
    mid_block: bool = True


LARGE = LargeSpec()
# Two levels (16x16 without attention, 8x8 with self- and cross-attention), no mid block. Attention over the 64
# tokens of the 8x8 level is what keeps a UNet cheap here: one 16x16 level with attention over 256 tokens (the
# previous small) cost more per image-step at 235K parameters than this at 223K (measured, 1 thread: 7.2 vs 3.1 ms
# at batch 4, 9.6 vs 6.3 ms at batch 1; the large 16 and 23 ms).
SMALL = SmallSpec(block_out_channels=(16, 32), heads=(1, 2), mid_block=False)
SMALL2 = SmallSpec(block_out_channels=(8, 16), heads=(1, 1), mid_block=False)  # 66K parameters, 1.8 ms at batch 4


@dataclass(frozen=True)
class TextEncoders:
    tokenizer: object
    plain: object  # CLIPTextModel (SDXL's first encoder)
    projected: object  # CLIPTextModelWithProjection (SD3's two, SDXL's second)

    @property
    def hidden(self) -> int:
        return int(self.projected.config.hidden_size)

    @property
    def projection(self) -> int:
        return int(self.projected.config.projection_dim)


def text_encoders_from_clip(clip_dir: str | Path) -> TextEncoders:
    """The world CLIP's text tower (saved by `save_pretrained` as a CLIPModel) as the pipelines' encoders."""
    from transformers import CLIPModel, CLIPTokenizer

    clip = CLIPModel.from_pretrained(str(clip_dir), dtype=torch.float32)
    tokenizer = CLIPTokenizer.from_pretrained(str(clip_dir), model_max_length=PIPELINE_TEXT_TOKENS)
    return text_encoders_from_model(clip, tokenizer)


def text_encoders_from_model(clip, tokenizer) -> TextEncoders:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    text_config = clip.config.text_config
    text_config.projection_dim = clip.config.projection_dim
    projected = CLIPTextModelWithProjection(text_config)
    projected.text_model.load_state_dict(clip.text_model.state_dict())
    projected.text_projection.load_state_dict(clip.text_projection.state_dict())
    plain = CLIPTextModel(text_config)
    plain.load_state_dict(clip.text_model.state_dict())
    for encoder in (projected, plain):
        encoder.requires_grad_(False).eval()
    return TextEncoders(tokenizer=tokenizer, plain=plain, projected=projected)


def large_transformer(spec: LargeSpec, latent_channels: int, latent_size: int, encoders: TextEncoders, seed: int):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=latent_size,
        patch_size=2,
        in_channels=latent_channels,
        out_channels=latent_channels,
        num_layers=spec.num_layers,
        attention_head_dim=spec.attention_head_dim,
        num_attention_heads=spec.num_attention_heads,
        joint_attention_dim=2 * encoders.hidden,  # the two CLIPs' hidden states, concatenated
        caption_projection_dim=spec.num_attention_heads * spec.attention_head_dim,
        pooled_projection_dim=2 * encoders.projection,  # the two CLIPs' pooled embeddings, concatenated
        pos_embed_max_size=latent_size,  # patches of a 2x larger request (max_size)
        qk_norm="rms_norm",  # as SD3.5: keeps attention logits bounded
    )


def small_unet(spec: SmallSpec, latent_channels: int, latent_size: int, encoders: TextEncoders, seed: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    levels = len(spec.block_out_channels)
    plain_levels = 1 if levels > 1 else 0
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        layers_per_block=1,
        block_out_channels=spec.block_out_channels,
        down_block_types=("DownBlock2D",) * plain_levels + ("CrossAttnDownBlock2D",) * (levels - plain_levels),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - plain_levels) + ("UpBlock2D",) * plain_levels,
        mid_block_type="UNetMidBlock2DCrossAttn" if spec.mid_block else None,
        attention_head_dim=spec.heads,
        use_linear_projection=True,
        transformer_layers_per_block=1,
        cross_attention_dim=2 * encoders.hidden,
        norm_num_groups=min(16, spec.block_out_channels[0] // 2),
        # SDXL's micro-conditioning: 6 size/crop ids embedded + the second encoder's pooled embedding.
        addition_embed_type="text_time",
        addition_time_embed_dim=spec.time_embed_dim,
        projection_class_embeddings_input_dim=6 * spec.time_embed_dim + encoders.projection,
    )


def large_pipeline(transformer, vae, encoders: TextEncoders):
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=LARGE_SHIFT),
        vae=vae,
        text_encoder=encoders.projected,
        tokenizer=encoders.tokenizer,
        text_encoder_2=encoders.projected,
        tokenizer_2=encoders.tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# SDXL's scheduler: scaled-linear betas, epsilon prediction, "leading" timesteps.
SDXL_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}
# The world's small models: SDXL's betas rescaled to zero terminal SNR, v-prediction and "trailing" timesteps (Lin et
# al., "Common Diffusion Noise Schedules and Sample Steps are Flawed"). With SDXL's own schedule the last training
# step still carries the image's mean colour, so a small model learns to read the background from its input, and
# from pure noise at inference it draws tinted smudges.
SMALL_SCHEDULER = {
    **SDXL_SCHEDULER,
    "steps_offset": 0,
    "timestep_spacing": "trailing",
    "rescale_betas_zero_snr": True,
    "prediction_type": "v_prediction",
}


def small_pipeline(unet, vae, encoders: TextEncoders):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SMALL_SCHEDULER),
        vae=vae,
        text_encoder=encoders.plain,
        tokenizer=encoders.tokenizer,
        text_encoder_2=encoders.projected,
        tokenizer_2=encoders.tokenizer,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_pipeline(pipe, out_dir: str | Path, card: dict, *, fp16: bool = True) -> Path:
    """save_pretrained (fp16 weights; the loader upcasts on CPU) plus a card of how it was trained and is served."""
    out_dir = Path(out_dir)
    if fp16:
        pipe.to(torch.float16)
    try:
        pipe.save_pretrained(out_dir, safe_serialization=True)
    finally:
        pipe.to(torch.float32)
    (out_dir / MODEL_CARD).write_text(json.dumps(card, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    return out_dir


def _jsonable(value):
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"cannot write {type(value).__name__} to a model card")


# How the world's models are served (32x32, the guidance they were tuned at).
WORLD_IMAGE_SIZE = 32
SERVING = {"large": {"guidance_scale": 4.0}, "small": {"guidance_scale": 4.0}, "small2": {"guidance_scale": 4.0}}
# Torch threads of a world model replica: the configs give each `num_cpus: 1`, and Ray sets OMP_NUM_THREADS to that.
WORLD_SERVING_THREADS = 1


def world_model_spec(path: str | Path, role: str, **overrides):
    """The ModelSpec that serves a world pipeline as trained (size, guidance, SD3's zero-token count)."""
    from modm.config.schema import ModelSpec

    if role not in SERVING:
        raise ValueError(f"role must be one of {sorted(SERVING)}, got {role!r}")
    fields = {
        "source": str(path),
        "default_size": WORLD_IMAGE_SIZE,
        "max_size": 2 * WORLD_IMAGE_SIZE,
        "max_sequence_length": WORLD_T5_TOKENS,
        **SERVING[role],
        **overrides,
    }
    return ModelSpec(**fields)


def pipeline_generator(pipe, *, steps: int = 20, guidance_scale: float | None = None, role: str | None = None):
    """A `modm.world.eval.PromptGenerator` over a world pipeline: each image's noise from its own seed."""
    import inspect

    guidance = guidance_scale if guidance_scale is not None else SERVING.get(role or "", {}).get("guidance_scale", 4.0)
    extra = {}
    if "max_sequence_length" in inspect.signature(type(pipe).__call__).parameters:
        extra["max_sequence_length"] = WORLD_T5_TOKENS

    def generate(prompts, seeds):
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        with torch.inference_mode():
            out = pipe(
                prompt=list(prompts),
                height=WORLD_IMAGE_SIZE,
                width=WORLD_IMAGE_SIZE,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=generators,
                **extra,
            )
        return out.images

    return generate
