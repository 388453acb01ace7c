"""What a step-batched pipeline family provides: each request's start, the batched denoiser call, the decode.

A `Family` replays, piece by piece, what its pipelines' `__call__` does for the arguments modm passes
(`DiffusionGenerator`: prompt, size, steps, guidance, a seeded CPU generator, the spec's call arguments), calling
the pipelines' own helpers (`encode_prompt`, `prepare_latents`, `get_timesteps`, `image_processor`) so that a
request's image equals its unbatched generation. Only the denoiser call is shared: the engine concatenates the
model rows of several requests (two under classifier-free guidance: uncond, cond) and gives each its own timestep.
"""

from __future__ import annotations

import copy
import inspect
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from modm.generation.generator import DiffusionGenerator, GenerationRequest, refine_schedule_steps
from modm.generation.interface import Operation
from modm.generation.resume import LatentSnapshots, schedule_from_step
from modm.generation.steps import StepControl
from modm.models.loading import ModelLoadError

__all__ = ["Denoising", "Family", "Job"]


@dataclass
class Job:
    """One caller's request as the engine receives it; `future` gets the result (an image, or with snapshots an
    (image, latents) pair) or the error."""

    operation: Operation
    request: GenerationRequest
    control: StepControl
    future: Future
    image: Image.Image | None = None  # img2img's input
    strength: float = 1.0  # img2img
    snapshot_steps: tuple[int, ...] = ()  # txt2img_with_snapshots
    latents: torch.Tensor | None = None  # resume's start
    steps_done: int = 0  # resume


@dataclass
class Denoising:
    """One request's run inside the batch: its own latents, scheduler copy and place in its schedule."""

    job: Job
    pipe: Any  # the pipeline that prepared it (the img2img twin for refinements), which also decodes it
    latents: torch.Tensor
    scheduler: Any
    timesteps: torch.Tensor
    guidance_scale: float
    conditioning: dict[str, torch.Tensor]  # denoiser inputs with one row per model row
    step_kwargs: dict = field(default_factory=dict)
    snapshots: LatentSnapshots | None = None
    position: int = 0  # steps of `timesteps` done
    feature_cache: Any = None  # its own feature_cache.RequestCacheState, when the model has a feature cache
    last_pass: int = -1  # the engine's number of the last pass it was in (round robin between image sizes)

    @property
    def guided(self) -> bool:
        """The pipelines' `do_classifier_free_guidance`."""
        return self.guidance_scale > 1

    @property
    def rows(self) -> int:
        return 2 if self.guided else 1

    @property
    def done(self) -> bool:
        return self.position >= len(self.timesteps)

    @property
    def timestep(self) -> torch.Tensor:
        return self.timesteps[self.position]

    @property
    def batch_key(self) -> tuple:
        """Requests share a denoiser pass only with latents of the same shape and dtype."""
        return tuple(self.latents.shape), self.latents.dtype


def call_default(pipe, name: str):
    """The default of `name` in the pipeline's `__call__`, which an unbatched call without it gets."""
    return inspect.signature(type(pipe).__call__).parameters[name].default


class Family:
    """The step-batching adapter of one pipeline family (subclasses: SD3, SDXL) over one loaded model."""

    txt2img_class: type
    img2img_class: type
    # The begin index the text-to-image pipeline sets on its scheduler right before its loop (None: it sets none).
    txt2img_begin_index: int | None = None

    def __init__(self, diffusion: DiffusionGenerator):
        self.diffusion = diffusion
        self.pipe = diffusion.pipe
        self.device = diffusion.device

    @classmethod
    def unsupported(cls, pipe) -> str | None:
        """Why this pipeline of the family cannot be step-batched, or None."""
        order = getattr(pipe.scheduler, "order", 1)
        if order != 1:
            return f"{type(pipe.scheduler).__name__} calls the denoiser {order} times per step"
        return None

    @property
    def denoiser(self) -> torch.nn.Module:
        raise NotImplementedError

    def refine_pipe(self):
        """The img2img twin, checked to be the pipeline this family replays."""
        twin = self.diffusion.refine_pipe
        if type(twin) is not self.img2img_class:
            raise ModelLoadError(
                f"{self.diffusion.name} model: its img2img pipeline is {type(twin).__name__}, step batching replays "
                f"{self.img2img_class.__name__}"
            )
        return twin

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        factor = self.pipe.vae_scale_factor
        return (1, self.denoiser.config.in_channels, height // factor, width // factor)

    # ------------------------------------------------------------------------------------------------ a start
    def start(self, job: Job) -> Denoising:
        """Everything the pipeline does before its denoising loop, for one request."""
        req = job.request
        guidance = self.diffusion.spec.guidance_scale if req.guidance_scale is None else req.guidance_scale
        generator = torch.Generator("cpu").manual_seed(req.seed)
        if job.operation is Operation.IMG2IMG:
            pipe = self.refine_pipe()
            conditioning = self.encode(pipe, req, guidance > 1, refine=True)
            dtype = conditioning["encoder_hidden_states"].dtype
            image = self.preprocess(pipe, job.image, req)
            steps = refine_schedule_steps(req.steps, job.strength)
            timesteps, steps = self.set_schedule(pipe, steps, req)
            timesteps, _ = pipe.get_timesteps(steps, job.strength, self.device)
            latents = pipe.prepare_latents(image, timesteps[:1].repeat(1), 1, 1, dtype, self.device, generator)
            scheduler = copy.deepcopy(pipe.scheduler)
        else:
            pipe = self.pipe
            conditioning = self.encode(pipe, req, guidance > 1, refine=False)
            dtype = conditioning["encoder_hidden_states"].dtype
            given = None
            if job.operation is Operation.RESUME:
                with schedule_from_step(pipe.scheduler, job.steps_done):
                    timesteps, _ = self.set_schedule(pipe, req.steps, req)
                given = job.latents.to(self.device, pipe.dtype)
            else:
                timesteps, _ = self.set_schedule(pipe, req.steps, req)
            channels = self.denoiser.config.in_channels
            latents = pipe.prepare_latents(1, channels, req.height, req.width, dtype, self.device, generator, given)
            scheduler = copy.deepcopy(pipe.scheduler)
            if self.txt2img_begin_index is not None:
                scheduler.set_begin_index(self.txt2img_begin_index)
        snapshots = LatentSnapshots(job.snapshot_steps) if job.operation is Operation.SNAPSHOTS else None
        cache = self.diffusion.feature_cache
        return Denoising(
            feature_cache=None if cache is None else cache.new_request(),
            job=job,
            pipe=pipe,
            latents=latents,
            scheduler=scheduler,
            timesteps=timesteps,
            guidance_scale=guidance,
            conditioning=conditioning,
            step_kwargs=self.step_kwargs(pipe, generator),
            snapshots=snapshots,
        )

    def encode(self, pipe, req: GenerationRequest, guided: bool, *, refine: bool) -> dict[str, torch.Tensor]:
        """The denoiser's conditioning for one request ([uncond, cond] rows when guided); the prompt embeddings are
        under "encoder_hidden_states"."""
        raise NotImplementedError

    def set_schedule(self, pipe, steps: int, req: GenerationRequest) -> tuple[torch.Tensor, int]:
        """`retrieve_timesteps` on the pipeline's scheduler as its `__call__` does."""
        raise NotImplementedError

    def preprocess(self, pipe, image: Image.Image, req: GenerationRequest) -> torch.Tensor:
        raise NotImplementedError

    def step_kwargs(self, pipe, generator: torch.Generator) -> dict:
        """Extra arguments of the pipeline's `scheduler.step` calls."""
        return {}

    # ------------------------------------------------------------------------------------------------ a pass
    def model_input(self, state: Denoising) -> torch.Tensor:
        """The request's denoiser input rows at its current step."""
        return torch.cat([state.latents] * 2) if state.guided else state.latents

    def denoise(self, sample: torch.Tensor, timestep: torch.Tensor, conditioning: dict) -> torch.Tensor:
        """One denoiser forward on the concatenated rows of several requests (timestep: one per row)."""
        raise NotImplementedError

    @property
    def one_request_per_pass(self) -> bool:
        """A feature-cached model's requests each get passes of their own (see `modm.generation.feature_cache`)."""
        return self.diffusion.feature_cache is not None

    def predict(self, states: list[Denoising]) -> list[torch.Tensor]:
        """One denoiser forward over the rows of every request in `states` (one batch key): each request's
        prediction, guidance applied. Leaves the requests' latents and schedules as they were. With a feature
        cache, `states` is one request, whose own cache state the forward runs on."""
        sample = torch.cat([self.model_input(s) for s in states])
        timestep = torch.cat([s.timestep.expand(s.rows) for s in states])
        conditioning = {key: torch.cat([s.conditioning[key] for s in states]) for key in states[0].conditioning}
        cache = self.diffusion.feature_cache
        if cache is None:
            output = self.denoise(sample, timestep, conditioning)
        else:
            if len(states) != 1:
                raise ValueError(f"a feature-cached model denoises one request per pass, got {len(states)}")
            with cache.serving(states[0].feature_cache):
                output = self.denoise(sample, timestep, conditioning)
        predictions = []
        for state, rows in zip(states, output.split([s.rows for s in states])):
            if state.guided:
                uncond, cond = rows.chunk(2)
                rows = uncond + state.guidance_scale * (cond - uncond)
            predictions.append(rows)
        return predictions

    def advance(self, state: Denoising, prediction: torch.Tensor) -> None:
        """The request's own scheduler step with its prediction."""
        state.latents = state.scheduler.step(
            prediction, state.timestep, state.latents, **state.step_kwargs, return_dict=False
        )[0]
        state.position += 1

    # ------------------------------------------------------------------------------------------------ the end
    def decode(self, state: Denoising) -> Image.Image:
        raise NotImplementedError
