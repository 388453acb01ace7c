"""Image-to-image for SANA (1.6B and the other `SanaPipeline` checkpoints), which diffusers 0.42.1 lacks.

The refinement MoDM wrote as a patched `SanaPipeline.edit()`: cut the T-step schedule at
t_start = T - int(T * strength), encode the image with the VAE (AutoencoderDC latents times
`vae.config.scaling_factor`), noise it to the schedule's timestep at t_start with the scheduler's own `add_noise`
(flow sigmas: (1 - sigma) * x + sigma * noise), and denoise the remaining int(T * strength) steps.

The denoising itself is diffusers' unmodified `SanaPipeline.__call__`: it is handed the noised latents and a
scheduler that sets only the tail of its schedule (`schedule_from_step`, as NIRVANA's resume uses), so prompt
encoding, guidance, the DPM-Solver++ steps and decoding are exactly those of a text-to-image run.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from diffusers import SanaPipeline
from diffusers.utils.torch_utils import randn_tensor

from modm.generation.resume import schedule_from_step

__all__ = ["SanaImg2ImgPipeline", "refine_start_step"]

# Guards int(T * strength) against strengths such as 1 - k/T landing a hair below an integer number of steps.
_STEPS_EPSILON = 1e-6


def refine_start_step(num_inference_steps: int, strength: float) -> int:
    """The step the refinement starts at: MoDM's t_start = T - int(T * strength), so int(T * strength) steps run."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength={strength} must be in (0, 1]")
    steps = int(num_inference_steps * strength + _STEPS_EPSILON)
    if steps < 1:
        raise ValueError(f"strength={strength} of a {num_inference_steps}-step schedule runs no denoising step")
    return num_inference_steps - steps


class SanaImg2ImgPipeline(SanaPipeline):
    """`SanaPipeline` that refines an image; build it with `SanaImg2ImgPipeline.from_pipe(sana)` (shared weights).

    The output has the image's size (or `height` x `width`, to which the image is resized); SANA's resolution
    binning is not applied, since the input already fixes the size.
    """

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: Any = None,
        strength: float = 0.6,
        num_inference_steps: int = 50,
        guidance_scale: float = 4.5,
        negative_prompt: str = "",
        num_images_per_prompt: int = 1,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        max_sequence_length: int = 300,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        **kwargs,
    ):
        if image is None:
            raise ValueError("image is required: it is the image to refine")
        for name in ("latents", "timesteps", "sigmas", "use_resolution_binning"):
            if name in kwargs:
                raise ValueError(f"{name} cannot be set: the refinement derives it from the image and strength")
        start = refine_start_step(num_inference_steps, strength)
        device = self._execution_device
        pixels = self.image_processor.preprocess(image, height=height, width=width)
        height, width = pixels.shape[-2:]
        batch = (len(prompt) if isinstance(prompt, list) else 1) * num_images_per_prompt
        if pixels.shape[0] not in (1, batch):
            raise ValueError(f"{pixels.shape[0]} images for a batch of {batch}")
        shape = (
            batch,
            self.transformer.config.in_channels,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        # Drawn first and in float32, as SanaPipeline draws its start noise, so that strength 1 is text-to-image.
        noise = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        if start == 0:
            latents = noise  # the whole schedule: the image is not used, as in a text-to-image run
        else:
            latents = self._noised_image_latents(pixels, noise, start, num_inference_steps, device)
        with schedule_from_step(self.scheduler, start):
            return super().__call__(
                prompt=prompt,
                negative_prompt=negative_prompt,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                num_images_per_prompt=num_images_per_prompt,
                height=height,
                width=width,
                generator=generator,
                latents=latents,
                output_type=output_type,
                return_dict=return_dict,
                use_resolution_binning=False,
                max_sequence_length=max_sequence_length,
                callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs or ["latents"],
                **kwargs,
            )

    def _noised_image_latents(
        self, pixels: torch.Tensor, noise: torch.Tensor, start: int, num_inference_steps: int, device: torch.device
    ) -> torch.Tensor:
        encoded = self.vae.encode(pixels.to(device=device, dtype=self.vae.dtype)).latent
        image_latents = encoded.float() * self.vae.config.scaling_factor
        if image_latents.shape[0] != noise.shape[0]:
            image_latents = image_latents.expand(noise.shape[0], *image_latents.shape[1:])
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        index = start * self.scheduler.order
        # add_noise then reads the noise level at the begin index, not by looking up a (possibly repeated) timestep.
        self.scheduler.set_begin_index(index)
        timestep = self.scheduler.timesteps[index : index + 1].repeat(noise.shape[0])
        return self.scheduler.add_noise(image_latents, noise, timestep)
