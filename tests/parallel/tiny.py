"""Tiny seeded pipelines for the parallel tests (fp32, CPU), built from the offline zoo's component factories."""

from __future__ import annotations

import tempfile

import torch

__all__ = ["tiny_sdxl_pipeline", "tiny_sd3_pipeline", "sdxl_inputs", "sd3_inputs"]


def _tokenizer():
    from modm.models.tokenizer import build_clip_tokenizer

    return build_clip_tokenizer(tempfile.mkdtemp(prefix="modm-tok-"))


def tiny_sdxl_pipeline(tokenizer=None):
    from diffusers import StableDiffusionXLPipeline

    from modm.models.tiny_zoo import small_components

    pipe = StableDiffusionXLPipeline(**small_components(tokenizer or _tokenizer()))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3_pipeline(tokenizer=None):
    from diffusers import StableDiffusion3Pipeline

    from modm.models.tiny_zoo import large_components

    pipe = StableDiffusion3Pipeline(**large_components(tokenizer or _tokenizer()))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sdxl_inputs(steps: int = 4, size: int = 64, seed: int = 0, guidance_scale: float = 5.0) -> dict:
    return dict(prompt="a red bicycle", num_inference_steps=steps, height=size, width=size,
                guidance_scale=guidance_scale, generator=torch.Generator("cpu").manual_seed(seed),
                output_type="pt")


def sd3_inputs(steps: int = 4, size: int = 64, seed: int = 0) -> dict:
    return dict(prompt="a red bicycle", num_inference_steps=steps, height=size, width=size, guidance_scale=5.0,
                generator=torch.Generator("cpu").manual_seed(seed), output_type="pt", max_sequence_length=77)
