"""Full generation and refinement through diffusers' own pipelines (no patched copies).

A `DiffusionGenerator` holds one loaded text-to-image pipeline and its image-to-image twin built from the same
components (`AutoPipelineForImage2Image.from_pipe` shares the weights). Outputs are deterministic by seed: the noise
comes from a seeded CPU `torch.Generator`, which gives the same draws on every device.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from PIL import Image

from modm.config.schema import ModelSpec
from modm.generation.resume import LatentSnapshots, schedule_from_step
from modm.generation.steps import StepControl
from modm.models.loading import ModelLoadError, load_pipeline
from modm.policy.requests import InvalidRequestError, check_dimensions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    width: int
    height: int
    steps: int
    seed: int
    guidance_scale: float | None = None  # None: the model spec's default


def denoiser_of(pipe) -> torch.nn.Module | None:
    """The pipeline's denoiser: its transformer, or its U-Net."""
    return getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)


def size_multiple(pipe) -> int:
    """Pixels per latent patch: image sides must be a multiple of this for the denoiser."""
    vae_factor = int(getattr(pipe, "vae_scale_factor", 8))
    denoiser = denoiser_of(pipe)
    config = getattr(denoiser, "config", None)
    patch = getattr(config, "patch_size", None)
    if patch is None:  # U-Nets downsample once per block but the last
        blocks = getattr(config, "block_out_channels", (1,))
        patch = 2 ** (len(blocks) - 1)
    return vae_factor * int(patch)


# Text-to-image pipelines whose image-to-image twin diffusers' AutoPipeline does not map, as "module:Class" (imported
# only when needed). diffusers 0.42.1 has none for SANA 1.6B's SanaPipeline: modm's is MoDM's `edit()`.
IMG2IMG_TWINS = {
    "SanaSprintPipeline": "diffusers:SanaSprintImg2ImgPipeline",
    "SanaPipeline": "modm.generation.sana_img2img:SanaImg2ImgPipeline",
}


def image_to_image_twin_class(pipe_class: type):
    """The img2img class registered for pipe_class in IMG2IMG_TWINS, or None (then AutoPipeline decides)."""
    import importlib

    path = IMG2IMG_TWINS.get(pipe_class.__name__)
    if path is None:
        return None
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def image_to_image_twin(pipe):
    """The img2img pipeline built from pipe's own components (weights shared, nothing copied)."""
    import diffusers
    from diffusers import AutoPipelineForImage2Image

    twin = image_to_image_twin_class(type(pipe))
    if twin is not None:
        return twin.from_pipe(pipe)
    try:
        return AutoPipelineForImage2Image.from_pipe(pipe)
    except ValueError as err:
        raise ModelLoadError(
            f"{type(pipe).__name__} has no image-to-image pipeline in diffusers {diffusers.__version__}, so it "
            f"cannot refine cached images; use it as the large model only ({err})"
        ) from None


class DiffusionGenerator:
    """txt2img and img2img on one model; `name` is its role in the system ("large" or "small")."""

    def __init__(self, pipe, spec: ModelSpec, name: str, *, row_stripes: int = 1):
        """`row_stripes`: how many row stripes a parallel patch method cuts the image into; each must still be a
        multiple of the pipeline's patch, so every rank refuses a bad size before any collective."""
        self.pipe = pipe
        self.spec = spec
        self.name = name
        self.size_multiple = size_multiple(pipe) * row_stripes
        self._txt2img_kwargs = spec_call_kwargs(pipe, spec)
        self._refine_pipe = None
        self.feature_cache = None  # modm.generation.feature_cache.FeatureCache, when the spec names one
        if spec.feature_cache is not None:
            from modm.generation.feature_cache import FeatureCache

            self.feature_cache = FeatureCache(denoiser_of(pipe), spec.feature_cache)

    @contextmanager
    def _cached(self):
        """One pipeline call with the feature cache (if any) on a fresh state: one request's, or that of a batch a
        batch-invariant cache serves (its decisions are the same for every member, so are the counts); the skip
        counts go into each image's `info` (`feature_cache.FEATURE_CACHE_INFO_KEY`). Yields a list to put the output
        in."""
        if self.feature_cache is None:
            yield []
            return
        from modm.config.feature_cache import FEATURE_CACHE_INFO_KEY

        state = self.feature_cache.new_request()
        output: list = []
        with self.feature_cache.serving(state):
            yield output
        for image in output[0].images:
            image.info[FEATURE_CACHE_INFO_KEY] = state.counts.as_dict()

    def _one_request_per_call(self, reqs: Sequence[GenerationRequest]) -> bool:
        """A model whose feature cache is not batch-invariant (the first-block cache) runs each request in a call of
        its own: its hook decides skip or compute once per forward from the whole batch, so a batched request's
        image would depend on its batch mates."""
        return self.feature_cache is not None and not self.feature_cache.batch_invariant and len(reqs) > 1

    @property
    def refine_pipe(self):
        """Built on first use: a model without an img2img twin can still serve full generations."""
        if self._refine_pipe is None:
            twin = image_to_image_twin(self.pipe)
            twin.set_progress_bar_config(disable=True)
            self._img2img_kwargs = spec_call_kwargs(twin, self.spec)
            # Some img2img pipelines (SD3) take the output size as arguments rather than from the image.
            self._img2img_takes_size = bool(_supported_kwargs(twin, {"height": 0, "width": 0}))
            self._refine_pipe = twin
        return self._refine_pipe

    @classmethod
    def from_spec(cls, spec: ModelSpec, name: str, *, device: torch.device | None = None) -> "DiffusionGenerator":
        return cls(load_pipeline(spec, device=device), spec, name)

    @property
    def device(self) -> torch.device:
        return self.pipe.device

    def check_request(self, req: GenerationRequest) -> None:
        if not isinstance(req.prompt, str) or not req.prompt.strip():
            raise InvalidRequestError("prompt must be a non-empty string")
        check_dimensions(
            req.width, req.height, size_multiple=self.size_multiple, max_size=self.spec.max_size, model=self.name
        )
        if req.steps <= 0:
            raise InvalidRequestError(f"steps={req.steps} must be positive")

    def _common(self, reqs: Sequence[GenerationRequest]) -> dict:
        """The call arguments of a batch of compatible requests (`batch_key`): a prompt and a seeded generator per
        request, so that each image is the one its request would get alone."""
        first = reqs[0]
        return {
            "prompt": [req.prompt for req in reqs],
            "num_inference_steps": first.steps,
            "guidance_scale": self.spec.guidance_scale if first.guidance_scale is None else first.guidance_scale,
            "generator": [torch.Generator("cpu").manual_seed(req.seed) for req in reqs],
        }

    def _check_batch(self, reqs: Sequence[GenerationRequest]) -> None:
        if not reqs:
            raise ValueError("a batch needs at least one request")
        for req in reqs:
            self.check_request(req)
        if len({batch_key(req) for req in reqs}) > 1:
            raise ValueError(f"requests of one batch must share size, steps and guidance: {[*reqs]}")

    @torch.inference_mode()
    def txt2img(self, req: GenerationRequest, control: StepControl | None = None) -> Image.Image:
        """Full generation: all req.steps denoising steps from noise. Raises GenerationInterrupted when `control`
        is stopped meanwhile."""
        return self.txt2img_batch([req], control)[0]

    @torch.inference_mode()
    def txt2img_batch(self, reqs: Sequence[GenerationRequest], control: StepControl | None = None) -> list[Image.Image]:
        """`txt2img` of compatible requests (same `batch_key`) in one pipeline call."""
        self._check_batch(reqs)
        if self._one_request_per_call(reqs):
            return [self.txt2img_batch([req], control)[0] for req in reqs]
        with self._cached() as output:
            output.append(
                self.pipe(
                    height=reqs[0].height,
                    width=reqs[0].width,
                    **self._common(reqs),
                    **self._txt2img_kwargs,
                    **_step_callback(self.pipe, control),
                )
            )
        return list(output[0].images)

    @torch.inference_mode()
    def img2img(
        self, req: GenerationRequest, image: Image.Image, strength: float, control: StepControl | None = None
    ) -> Image.Image:
        """Refinement: re-noise `image` to strength and run the last int(steps * strength) steps. Raises
        GenerationInterrupted when `control` is stopped meanwhile."""
        return self.img2img_batch([req], [image], strength, control)[0]

    @torch.inference_mode()
    def img2img_batch(
        self,
        reqs: Sequence[GenerationRequest],
        images: Sequence[Image.Image],
        strength: float,
        control: StepControl | None = None,
    ) -> list[Image.Image]:
        """`img2img` of compatible requests at one strength in one pipeline call, `images[i]` refined for `reqs[i]`."""
        self._check_batch(reqs)
        check_strength(strength)
        if len(images) != len(reqs):
            raise ValueError(f"{len(images)} images for {len(reqs)} requests")
        if self._one_request_per_call(reqs):
            return [self.img2img_batch([req], [image], strength, control)[0] for req, image in zip(reqs, images)]
        width, height = reqs[0].width, reqs[0].height
        images = [sized_rgb(image, width, height) for image in images]
        refine_pipe = self.refine_pipe
        size = {"height": height, "width": width} if self._img2img_takes_size else {}
        common = self._common(reqs)
        # img2img runs int(steps * strength) steps; with few steps that can round to zero, which diffusers cannot
        # run. Refine with at least one step by stretching the schedule just enough.
        common["num_inference_steps"] = refine_schedule_steps(reqs[0].steps, strength)
        with self._cached() as output:
            output.append(
                refine_pipe(
                    image=images,
                    strength=strength,
                    **size,
                    **common,
                    **self._img2img_kwargs,
                    **_step_callback(refine_pipe, control),
                )
            )
        return list(output[0].images)

    def check_capabilities(self, needs) -> None:
        """Refuse (CapabilityError naming `models.<name>.<field>`) a model that cannot do what `needs` asks
        (`capabilities.model_needs(mode, role, spec)`): refine, resume, its parallel method, its step count."""
        from modm.generation.capabilities import check_model_capabilities

        check_model_capabilities(self.pipe, needs, field=f"models.{self.name}")

    def check_resumable(self) -> None:
        """NIRVANA needs the pipeline to report latents per step, to accept latents to start from, and a scheduler
        whose tail reproduces the uninterrupted run (see capabilities.resume_problem)."""
        from modm.generation.capabilities import resume_problem

        problem = resume_problem(type(self.pipe), self.pipe.scheduler)
        if problem:
            raise ModelLoadError(f"{self.name} model {self.spec.source}: {problem}, which NIRVANA's latent cache needs")

    @torch.inference_mode()
    def txt2img_with_snapshots(
        self, req: GenerationRequest, snapshot_steps: tuple[int, ...], control: StepControl | None = None
    ) -> tuple[Image.Image, dict[int, torch.Tensor]]:
        """Full generation that also returns the latents after each step count in `snapshot_steps` (CPU)."""
        return self.txt2img_with_snapshots_batch([req], snapshot_steps, control)[0]

    @torch.inference_mode()
    def txt2img_with_snapshots_batch(
        self, reqs: Sequence[GenerationRequest], snapshot_steps: tuple[int, ...], control: StepControl | None = None
    ) -> list[tuple[Image.Image, dict[int, torch.Tensor]]]:
        """`txt2img_with_snapshots` of compatible requests in one pipeline call; each gets its own latents."""
        self._check_batch(reqs)
        steps = reqs[0].steps
        outside = [s for s in snapshot_steps if not 0 < s < steps]
        if outside:
            raise InvalidRequestError(f"snapshot steps {outside} are not inside a {steps}-step run")
        if self._one_request_per_call(reqs):
            return [self.txt2img_with_snapshots_batch([req], snapshot_steps, control)[0] for req in reqs]
        snapshots = LatentSnapshots(snapshot_steps)

        def on_step_end(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
            snapshots(pipe, step, timestep, callback_kwargs)
            return {} if control is None else control.on_step_end(pipe, step, timestep, callback_kwargs)

        with self._cached() as output:
            output.append(
                self.pipe(
                    height=reqs[0].height,
                    width=reqs[0].width,
                    **self._common(reqs),
                    **self._txt2img_kwargs,
                    callback_on_step_end=on_step_end,
                    callback_on_step_end_tensor_inputs=["latents"],
                )
            )
        out = output[0]
        return [
            (image, {done: latents[i : i + 1].clone() for done, latents in snapshots.latents.items()})
            for i, image in enumerate(out.images)
        ]

    @torch.inference_mode()
    def resume(
        self, req: GenerationRequest, latents: torch.Tensor, steps_done: int, control: StepControl | None = None
    ) -> Image.Image:
        """The last req.steps - steps_done steps of a run, from its latents after `steps_done` steps (any float dtype:
        a cache may hold them in float16)."""
        return self.resume_batch([req], [latents], steps_done, control)[0]

    @torch.inference_mode()
    def resume_batch(
        self,
        reqs: Sequence[GenerationRequest],
        latents: Sequence[torch.Tensor],
        steps_done: int,
        control: StepControl | None = None,
    ) -> list[Image.Image]:
        """`resume` of compatible requests from one step in one pipeline call, `latents[i]` for `reqs[i]`."""
        self._check_batch(reqs)
        if len(latents) != len(reqs):
            raise ValueError(f"{len(latents)} latents for {len(reqs)} requests")
        for one in latents:
            check_resume(one, steps_done, reqs[0].steps)
        if self._one_request_per_call(reqs):
            return [self.resume_batch([req], [one], steps_done, control)[0] for req, one in zip(reqs, latents)]
        with schedule_from_step(self.pipe.scheduler, steps_done), self._cached() as output:
            output.append(
                self.pipe(
                    height=reqs[0].height,
                    width=reqs[0].width,
                    latents=torch.cat([one.to(self.device, self.pipe.dtype) for one in latents]),
                    **self._common(reqs),
                    **self._txt2img_kwargs,
                    **_step_callback(self.pipe, control),
                )
            )
        return list(output[0].images)

    @torch.inference_mode()
    def measure_step_cost_s(
        self, size: int, *, steps: tuple[int, int] = (2, 12), repeats: int = 3, batch_size: int = 1
    ) -> float:
        """Seconds per denoising step of a batch of `batch_size` images at size x size (guidance included), from two
        step counts so that text encoding and set-up cancel; VAE decoding is skipped."""

        def run(n: int) -> float:
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                self.pipe(
                    prompt=["a dog riding a bike"] * batch_size,
                    height=size,
                    width=size,
                    num_inference_steps=n,
                    guidance_scale=self.spec.guidance_scale,
                    output_type="latent",
                    generator=torch.Generator("cpu").manual_seed(0),
                    **self._txt2img_kwargs,
                )
                best = min(best, time.perf_counter() - start)
            return best

        run(steps[0])  # warm-up
        low, high = run(steps[0]), run(steps[1])
        return max(high - low, 0.0) / (steps[1] - steps[0])


def batch_key(req: GenerationRequest) -> tuple:
    """Requests with equal keys can share one pipeline call: same size, steps and guidance."""
    return (req.width, req.height, req.steps, req.guidance_scale)


def check_strength(strength: float) -> None:
    if not 0.0 < strength <= 1.0:
        raise InvalidRequestError(f"strength={strength} must be in (0, 1]")


def check_resume(latents: torch.Tensor, steps_done: int, steps: int) -> None:
    if not 0 < steps_done < steps:
        raise InvalidRequestError(f"cannot resume after step {steps_done} of a {steps}-step run")
    if latents.ndim < 3 or latents.shape[0] != 1:
        raise InvalidRequestError(f"latents of shape {tuple(latents.shape)} are not one image's latents")


def refine_schedule_steps(steps: int, strength: float) -> int:
    """The schedule length img2img is called with: `steps`, stretched so that int(length * strength) >= 1."""
    return max(steps, math.ceil(1.0 / strength - 1e-9))


def sized_rgb(image: Image.Image, width: int, height: int) -> Image.Image:
    """The RGB image of the requested size that img2img refines."""
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    return image


def spec_call_kwargs(pipe, spec: ModelSpec) -> dict:
    """Call arguments the spec sets that this pipeline takes (e.g. T5 token count for SD3/FLUX only).

    SANA's pipelines would otherwise generate at the nearest size of their aspect-ratio bins and resize to the
    requested one; modm's size rules already fix the size, so the model generates the size asked for (1024x1024,
    the shipped default, is a bin of its own either way)."""
    return _supported_kwargs(pipe, {"max_sequence_length": spec.max_sequence_length, "use_resolution_binning": False})


def _step_callback(pipe, control: StepControl | None) -> dict:
    """The call argument that hooks `control` into the denoising loop, if this pipeline takes one."""
    if control is None:
        return {}
    hooked = _supported_kwargs(pipe, {"callback_on_step_end": control.on_step_end})
    if not hooked:
        logger.warning("%s takes no callback_on_step_end: a cancelled generation runs to its end", type(pipe).__name__)
    return hooked


def _supported_kwargs(pipe, candidates: dict) -> dict:
    params = inspect.signature(type(pipe).__call__).parameters
    return {k: v for k, v in candidates.items() if k in params}
