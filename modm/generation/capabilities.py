"""What a loaded model can do for the mode and role it is configured for, decided before serving starts.

A config whose model cannot refine (MoDM's small model), resume part-way (NIRVANA's large model), run the requested
parallel method or take its feature cache must be refused at build time naming the field and the reason, never
answered with a 503 at the first request. Each `*_problem` function is pure (classes, a scheduler object and numbers
in, a reason or None out); `check_model_capabilities` combines them for one model and raises `CapabilityError`.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from dataclasses import dataclass

from modm.config.feature_cache import FeatureCacheKind
from modm.config.loader import ConfigError
from modm.config.parallel import ParallelMethod
from modm.config.schema import ModelSpec, SystemMode
from modm.generation.resume import tail_schedule_problem
from modm.models.loading import ModelLoadError

__all__ = [
    "CapabilityError",
    "ModelNeeds",
    "PipelineClasses",
    "check_model_capabilities",
    "check_spec_capabilities",
    "feature_cache_kind_problem",
    "model_needs",
    "parallel_problem",
    "pipeline_classes",
    "refine_problem",
    "resume_problem",
    "steps_problem",
]

# The denoiser classes modm.parallel's wrappers handle (parallelize_denoiser, asyncdiff.split.denoiser_units).
PARALLEL_DENOISERS = ("UNet2DConditionModel", "SD3Transformer2DModel")


class CapabilityError(ModelLoadError, ConfigError):
    """A model that cannot do what its role needs; `field` is the config path to change (e.g. models.small.source)."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class ModelNeeds:
    refine: bool = False  # img2img of cached images (MoDM's small model)
    resume: bool = False  # stop and resume part-way (NIRVANA's large model)
    parallel: ParallelMethod = ParallelMethod.NONE
    steps: int = 50  # denoising steps of a full generation (the spec's num_inference_steps)
    feature_cache: FeatureCacheKind | None = None  # the diffusers feature-cache hook it runs with


def model_needs(mode: SystemMode, role: str, spec: ModelSpec) -> ModelNeeds:
    """What `role` ("large" or "small") must be able to do in `mode`."""
    return ModelNeeds(
        refine=mode is SystemMode.MODM and role == "small",
        resume=mode is SystemMode.NIRVANA and role == "large",
        parallel=spec.parallel.method,
        steps=spec.num_inference_steps,
        feature_cache=None if spec.feature_cache is None else spec.feature_cache.kind,
    )


def _call_parameters(pipe_class: type) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(pipe_class.__call__).parameters)


def refine_problem(pipe_class: type) -> str | None:
    """Why pipe_class has no image-to-image twin to refine cached images with, or None."""
    from diffusers.pipelines.auto_pipeline import AUTO_IMAGE2IMAGE_PIPELINES_MAPPING, _get_task_class

    from modm.generation.generator import image_to_image_twin_class

    if image_to_image_twin_class(pipe_class) is not None:
        return None
    try:
        _get_task_class(AUTO_IMAGE2IMAGE_PIPELINES_MAPPING, pipe_class.__name__)
    except ValueError:
        import diffusers

        return (
            f"{pipe_class.__name__} has no image-to-image pipeline in diffusers {diffusers.__version__} or "
            "modm, so it cannot refine cached images; use it as the large model only"
        )
    return None


def resume_problem(pipe_class: type, scheduler) -> str | None:
    """Why a pipeline with this scheduler cannot stop after step k and resume from its latents exactly, or None."""
    missing = sorted({"latents", "callback_on_step_end"} - set(_call_parameters(pipe_class)))
    if missing:
        return f"{pipe_class.__name__} takes no {', '.join(missing)}, which NIRVANA's stop-and-resume needs"
    name = type(scheduler).__name__
    problem = tail_schedule_problem(scheduler)
    if problem:
        return f"{name} cannot start part-way through its schedule: {problem}"
    if int(getattr(scheduler.config, "solver_order", 1) or 1) > 1:
        return (
            f"{name} is a multistep solver (solver_order={scheduler.config.solver_order}): a resumed run lacks "
            "the model outputs of the steps before k, so it would not reproduce the uninterrupted run"
        )
    if float(getattr(scheduler, "init_noise_sigma", 1.0)) != 1.0:
        return (
            f"{name} scales the start latents by init_noise_sigma={float(scheduler.init_noise_sigma):g}, which "
            f"{pipe_class.__name__} also applies to latents it is given; resuming needs a scheduler without it "
            "(flow matching, e.g. FlowMatchEulerDiscreteScheduler)"
        )
    return None


def parallel_problem(denoiser_class: type | None, method: ParallelMethod) -> str | None:
    """Why this denoiser cannot run `method` across devices, or None."""
    if method is ParallelMethod.NONE:
        return None
    if method in (ParallelMethod.ULYSSES, ParallelMethod.RING):
        from modm.parallel.context_parallel import context_parallel_problem

        return context_parallel_problem(denoiser_class, method)
    name = getattr(denoiser_class, "__name__", "no unet or transformer")
    if name not in PARALLEL_DENOISERS:
        return (
            f"{method.value} supports {' and '.join(PARALLEL_DENOISERS)} denoisers, this model has {name}; "
            "set parallel.method: none"
        )
    return None


def feature_cache_kind_problem(denoiser_class: type | None, needs: ModelNeeds) -> str | None:
    """Why this denoiser cannot run `needs.feature_cache` (with its parallel method), or None."""
    if needs.feature_cache is None:
        return None
    if needs.parallel is not ParallelMethod.NONE:
        return (
            f"a feature cache does not combine with parallel.method {needs.parallel.value} (the parallel denoiser "
            "wrappers replace the modules diffusers' hooks attach to); set parallel.method: none or drop it"
        )
    from modm.generation.feature_cache import feature_cache_problem

    return feature_cache_problem(getattr(denoiser_class, "__name__", None), needs.feature_cache)


def steps_problem(pipe_class: type, steps: int) -> str | None:
    """Why the pipeline cannot run `steps` denoising steps, or None. SANA-Sprint's pipelines run exactly 2 while
    `intermediate_timesteps` is set, and it is set by default."""
    param = _call_parameters(pipe_class).get("intermediate_timesteps")
    if param is not None and param.default is not None and steps != 2:
        return (
            f"{pipe_class.__name__} runs only 2 steps while intermediate_timesteps is set (its default "
            f"{param.default}), got {steps}; use num_inference_steps: 2, or a SANA 1.6B source "
            "(SanaPipeline) for 50-step refinement"
        )
    return None


def check_model_capabilities(pipe, needs: ModelNeeds, *, field: str) -> None:
    """Raise CapabilityError naming `{field}.<name>` when the loaded pipeline cannot do what `needs` asks."""
    pipe_class = type(pipe)
    problem = steps_problem(pipe_class, needs.steps)
    if problem:
        raise CapabilityError(f"{field}.num_inference_steps", problem)
    if needs.refine:
        problem = refine_problem(pipe_class)
        if problem is None:
            from modm.generation.generator import image_to_image_twin_class

            twin = image_to_image_twin_class(pipe_class)
            problem = steps_problem(twin, needs.steps) if twin is not None else None
        if problem:
            raise CapabilityError(f"{field}.source", problem)
    if needs.resume:
        problem = resume_problem(pipe_class, pipe.scheduler)
        if problem:
            raise CapabilityError(f"{field}.source", problem)
    denoiser = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
    denoiser_class = type(denoiser) if denoiser is not None else None
    problem = parallel_problem(denoiser_class, needs.parallel)
    if problem:
        raise CapabilityError(f"{field}.parallel.method", problem)
    problem = feature_cache_kind_problem(denoiser_class, needs)
    if problem:
        raise CapabilityError(f"{field}.feature_cache.kind", problem)


@dataclass(frozen=True)
class PipelineClasses:
    """What a pipeline is made of, read from its model_index.json and scheduler config (no weights loaded)."""

    pipeline: type
    denoiser: type | None
    scheduler: object


def pipeline_classes(spec: ModelSpec) -> PipelineClasses:
    """Resolve spec.source's pipeline and denoiser classes and build its scheduler from its config alone."""
    import diffusers

    from modm.models.loading import pipeline_index

    index = pipeline_index(spec.source, spec.revision)
    pipeline = getattr(diffusers, str(index.get("_class_name")), None)
    if pipeline is None:
        raise ModelLoadError(
            f"{spec.source!r}: model_index.json names {index.get('_class_name')!r}, which is not "
            f"a diffusers {diffusers.__version__} pipeline"
        )

    def component_class(name: str):
        entry = index.get(name)
        if isinstance(entry, list) and len(entry) == 2 and entry[1]:
            return getattr(diffusers, entry[1], None)
        return None

    denoiser = component_class("transformer") or component_class("unet")
    scheduler_class = component_class("scheduler")
    scheduler = None
    if scheduler_class is not None:
        local = Path(spec.source).expanduser()
        source = str(local) if local.is_dir() else spec.source
        scheduler = scheduler_class.from_config(
            scheduler_class.load_config(source, subfolder="scheduler", revision=spec.revision)
        )
    return PipelineClasses(pipeline, denoiser, scheduler)


def check_spec_capabilities(spec: ModelSpec, needs: ModelNeeds, *, field: str) -> None:
    """The build-time form of check_model_capabilities: from the model's configs, before any replica loads it."""
    classes = pipeline_classes(spec)
    problem = steps_problem(classes.pipeline, needs.steps)
    if problem:
        raise CapabilityError(f"{field}.num_inference_steps", problem)
    if needs.refine:
        from modm.generation.generator import image_to_image_twin_class

        problem = refine_problem(classes.pipeline)
        twin = image_to_image_twin_class(classes.pipeline) if problem is None else None
        problem = problem or (steps_problem(twin, needs.steps) if twin is not None else None)
        if problem:
            raise CapabilityError(f"{field}.source", problem)
    if needs.resume and classes.scheduler is not None:
        problem = resume_problem(classes.pipeline, classes.scheduler)
        if problem:
            raise CapabilityError(f"{field}.source", problem)
    problem = parallel_problem(classes.denoiser, needs.parallel)
    if problem:
        raise CapabilityError(f"{field}.parallel.method", problem)
    problem = feature_cache_kind_problem(classes.denoiser, needs)
    if problem:
        raise CapabilityError(f"{field}.feature_cache.kind", problem)
