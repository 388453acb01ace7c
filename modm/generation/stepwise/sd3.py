"""The SD3 family: `StableDiffusion3Pipeline` and `StableDiffusion3Img2ImgPipeline` (SD3Transformer2DModel)."""

from __future__ import annotations

import torch
from diffusers import StableDiffusion3Img2ImgPipeline, StableDiffusion3Pipeline
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift, retrieve_timesteps
from PIL import Image

from modm.generation.generator import GenerationRequest, spec_call_kwargs
from modm.generation.stepwise.family import Denoising, Family, call_default

__all__ = ["SD3Family"]


class SD3Family(Family):
    txt2img_class = StableDiffusion3Pipeline
    img2img_class = StableDiffusion3Img2ImgPipeline

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipe.transformer

    def encode(self, pipe, req: GenerationRequest, guided: bool, *, refine: bool) -> dict[str, torch.Tensor]:
        tokens = spec_call_kwargs(pipe, self.diffusion.spec).get("max_sequence_length")
        prompt, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt=req.prompt,
            prompt_2=None,
            prompt_3=None,
            do_classifier_free_guidance=guided,
            device=self.device,
            clip_skip=None,
            num_images_per_prompt=1,
            max_sequence_length=call_default(pipe, "max_sequence_length") if tokens is None else tokens,
        )
        if guided:
            prompt, pooled = torch.cat([negative, prompt]), torch.cat([negative_pooled, pooled])
        return {"encoder_hidden_states": prompt, "pooled_projections": pooled}

    def set_schedule(self, pipe, steps: int, req: GenerationRequest) -> tuple[torch.Tensor, int]:
        config = pipe.scheduler.config
        shift = {}
        if config.get("use_dynamic_shifting", None):
            patch = pipe.transformer.config.patch_size
            tokens = (req.height // pipe.vae_scale_factor // patch) * (req.width // pipe.vae_scale_factor // patch)
            shift["mu"] = calculate_shift(
                tokens,
                config.get("base_image_seq_len", 256),
                config.get("max_image_seq_len", 4096),
                config.get("base_shift", 0.5),
                config.get("max_shift", 1.16),
            )
        return retrieve_timesteps(pipe.scheduler, steps, self.device, sigmas=None, **shift)

    def preprocess(self, pipe, image: Image.Image, req: GenerationRequest) -> torch.Tensor:
        return pipe.image_processor.preprocess(image, height=req.height, width=req.width)

    def denoise(self, sample: torch.Tensor, timestep: torch.Tensor, conditioning: dict) -> torch.Tensor:
        return self.pipe.transformer(
            hidden_states=sample,
            timestep=timestep,
            encoder_hidden_states=conditioning["encoder_hidden_states"],
            pooled_projections=conditioning["pooled_projections"],
            joint_attention_kwargs=None,
            return_dict=False,
        )[0]

    def decode(self, state: Denoising) -> Image.Image:
        vae = state.pipe.vae
        latents = (state.latents / vae.config.scaling_factor) + vae.config.shift_factor
        image = vae.decode(latents, return_dict=False)[0]
        return state.pipe.image_processor.postprocess(image, output_type="pil")[0]
