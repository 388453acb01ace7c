"""Tiny seeded pipelines for the parallel tests (fp32, CPU), built from the offline zoo's component factories."""

from __future__ import annotations

import tempfile

import torch
from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline, StableDiffusionXLPipeline

from modm.models.tiny_zoo import large_components, small_components
from modm.models.tokenizer import build_clip_tokenizer

__all__ = ["tiny_sdxl_pipeline", "tiny_sd3_pipeline", "sdxl_inputs", "sd3_inputs"]


def _tokenizer():
    return build_clip_tokenizer(tempfile.mkdtemp(prefix="modm-tok-"))


def tiny_sdxl_pipeline(tokenizer=None):
    pipe = StableDiffusionXLPipeline(**small_components(tokenizer or _tokenizer()))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3_pipeline(tokenizer=None):
    """The zoo's SD3 pipeline with a smaller transformer that also exercises SD3.5's dual attention and QK norm."""
    components = large_components(tokenizer or _tokenizer())
    torch.manual_seed(0)
    components["transformer"] = SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=3,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=64,
        caption_projection_dim=32,
        pooled_projection_dim=64,
        pos_embed_max_size=96,
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )
    pipe = StableDiffusion3Pipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sdxl_inputs(steps: int = 4, size: int = 64, seed: int = 0, guidance_scale: float = 5.0) -> dict:
    return dict(
        prompt="a red bicycle",
        num_inference_steps=steps,
        height=size,
        width=size,
        guidance_scale=guidance_scale,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="pt",
    )


def sd3_inputs(steps: int = 4, size: int = 64, seed: int = 0) -> dict:
    return dict(
        prompt="a red bicycle",
        num_inference_steps=steps,
        height=size,
        width=size,
        guidance_scale=5.0,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="pt",
        max_sequence_length=77,
    )
