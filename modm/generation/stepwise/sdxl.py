"""The SDXL family: `StableDiffusionXLPipeline` and `StableDiffusionXLImg2ImgPipeline` (UNet2DConditionModel with
text_time embeddings: pooled text and size/crop time ids as added conditions; the scheduler scales the input)."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import retrieve_timesteps
from PIL import Image

from modm.generation.generator import GenerationRequest
from modm.generation.stepwise.family import Denoising, Family, call_default

__all__ = ["SDXLFamily"]


class SDXLFamily(Family):
    txt2img_class = StableDiffusionXLPipeline
    img2img_class = StableDiffusionXLImg2ImgPipeline
    txt2img_begin_index = 0

    @classmethod
    def unsupported(cls, pipe) -> str | None:
        if pipe.unet.config.time_cond_proj_dim is not None:
            return "its UNet takes a guidance embedding (time_cond_proj_dim), which step batching does not build"
        return super().unsupported(pipe)

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipe.unet

    def encode(self, pipe, req: GenerationRequest, guided: bool, *, refine: bool) -> dict[str, torch.Tensor]:
        prompt, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt=req.prompt,
            prompt_2=None,
            device=self.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=guided,
            clip_skip=None,
        )
        if pipe.text_encoder_2 is None:
            projection_dim = int(pooled.shape[-1])
        else:
            projection_dim = pipe.text_encoder_2.config.projection_dim
        size, corner = (req.height, req.width), call_default(pipe, "crops_coords_top_left")
        if refine:
            time_ids, negative_time_ids = pipe._get_add_time_ids(
                size,
                corner,
                size,
                call_default(pipe, "aesthetic_score"),
                call_default(pipe, "negative_aesthetic_score"),
                size,
                call_default(pipe, "negative_crops_coords_top_left"),
                size,
                dtype=prompt.dtype,
                text_encoder_projection_dim=projection_dim,
            )
        else:
            time_ids = pipe._get_add_time_ids(
                size, corner, size, dtype=prompt.dtype, text_encoder_projection_dim=projection_dim
            )
            negative_time_ids = time_ids
        if guided:
            prompt, pooled = torch.cat([negative, prompt]), torch.cat([negative_pooled, pooled])
            time_ids = torch.cat([negative_time_ids, time_ids])
        return {
            "encoder_hidden_states": prompt.to(self.device),
            "text_embeds": pooled.to(self.device),
            "time_ids": time_ids.to(self.device),
        }

    def set_schedule(self, pipe, steps: int, req: GenerationRequest) -> tuple[torch.Tensor, int]:
        return retrieve_timesteps(pipe.scheduler, steps, self.device, None, None)

    def preprocess(self, pipe, image: Image.Image, req: GenerationRequest) -> torch.Tensor:
        return pipe.image_processor.preprocess(image)

    def step_kwargs(self, pipe, generator: torch.Generator) -> dict:
        return pipe.prepare_extra_step_kwargs(generator, call_default(pipe, "eta"))

    def model_input(self, state: Denoising) -> torch.Tensor:
        return state.scheduler.scale_model_input(super().model_input(state), state.timestep)

    def denoise(self, sample: torch.Tensor, timestep: torch.Tensor, conditioning: dict) -> torch.Tensor:
        return self.pipe.unet(
            sample,
            timestep,
            encoder_hidden_states=conditioning["encoder_hidden_states"],
            timestep_cond=None,
            cross_attention_kwargs=None,
            added_cond_kwargs={"text_embeds": conditioning["text_embeds"], "time_ids": conditioning["time_ids"]},
            return_dict=False,
        )[0]

    def decode(self, state: Denoising) -> Image.Image:
        pipe, latents = state.pipe, state.latents
        vae = pipe.vae
        # As the pipelines do: a float16 VAE that overflows decodes in float32.
        upcast = vae.dtype == torch.float16 and vae.config.force_upcast
        if upcast:
            pipe.upcast_vae()
            latents = latents.to(next(iter(vae.post_quant_conv.parameters())).dtype)
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            mean = torch.tensor(mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std / vae.config.scaling_factor + mean
        else:
            latents = latents / vae.config.scaling_factor
        image = vae.decode(latents, return_dict=False)[0]
        if upcast:
            vae.to(dtype=torch.float16)
        if pipe.watermark is not None:
            image = pipe.watermark.apply_watermark(image)
        return pipe.image_processor.postprocess(image, output_type="pil")[0]
