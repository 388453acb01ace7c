"""Build-time capability checks: a model that cannot refine, resume or run its parallel method is refused naming the
field and the reason (the issue's "Bad input" rule), on tiny pipelines of the real classes."""

import sys
from pathlib import Path

import pytest
from diffusers import SanaSprintPipeline

from modm.config import ConfigError, ModelSpec, SystemMode
from modm.config.parallel import ParallelConfig, ParallelMethod
from modm.generation.capabilities import (
    CapabilityError,
    ModelNeeds,
    check_model_capabilities,
    model_needs,
    parallel_problem,
    refine_problem,
    resume_problem,
    steps_problem,
)
from modm.models.loading import ModelLoadError

sys.path.insert(0, str(Path(__file__).parent))
from tiny_families import tiny_flux_pipeline, tiny_sana_pipeline, tiny_sd3_pipeline


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
    from modm.models.tokenizer import build_clip_tokenizer

    return build_clip_tokenizer(tmp_path_factory.mktemp("bpe"))


@pytest.fixture(scope="module")
def pipes(clip_tokenizer):
    from diffusers import StableDiffusionXLPipeline

    from modm.models.tiny_zoo import small_components

    return {
        "sd3": tiny_sd3_pipeline(clip_tokenizer),
        "flux": tiny_flux_pipeline(clip_tokenizer),
        "sana": tiny_sana_pipeline(),
        "sdxl": StableDiffusionXLPipeline(**small_components(clip_tokenizer)),
    }


def test_what_each_tiny_family_can_do(pipes):
    sd3, flux, sana, sdxl = pipes["sd3"], pipes["flux"], pipes["sana"], pipes["sdxl"]
    assert [refine_problem(type(p)) for p in (sd3, flux, sana, sdxl)] == [None] * 4  # SANA: modm's img2img
    assert resume_problem(type(sd3), sd3.scheduler) is None and resume_problem(type(flux), flux.scheduler) is None
    assert "multistep solver" in resume_problem(type(sana), sana.scheduler)
    assert "init_noise_sigma" in resume_problem(type(sdxl), sdxl.scheduler)
    assert parallel_problem(type(sd3.transformer), ParallelMethod.ASYNCDIFF) is None
    assert parallel_problem(type(sdxl.unet), ParallelMethod.DISTRIFUSION) is None
    assert "FluxTransformer2DModel" in parallel_problem(type(flux.transformer), ParallelMethod.DISTRIFUSION)
    assert parallel_problem(type(flux.transformer), ParallelMethod.NONE) is None


def test_modes_need_what_their_roles_do():
    spec = ModelSpec(source="x", parallel=ParallelConfig(method="distrifusion", world_size=2))
    assert model_needs(SystemMode.MODM, "small", spec) == ModelNeeds(refine=True, parallel=ParallelMethod.DISTRIFUSION)
    assert model_needs(SystemMode.NIRVANA, "large", spec).resume
    assert model_needs(SystemMode.VANILLA, "large", spec) == ModelNeeds(parallel=ParallelMethod.DISTRIFUSION)


def test_refusals_name_the_field_and_the_reason(pipes):
    with pytest.raises(CapabilityError, match=r"^models.large.source: .*multistep solver") as err:
        check_model_capabilities(pipes["sana"], ModelNeeds(resume=True), field="models.large")
    assert err.value.field == "models.large.source"
    assert isinstance(err.value, ModelLoadError) and isinstance(err.value, ConfigError)
    with pytest.raises(CapabilityError, match=r"^models.large.parallel.method: distrifusion supports"):
        check_model_capabilities(pipes["flux"], ModelNeeds(parallel=ParallelMethod.DISTRIFUSION), field="models.large")
    check_model_capabilities(pipes["flux"], ModelNeeds(resume=True, steps=50), field="models.large")
    check_model_capabilities(pipes["sana"], ModelNeeds(refine=True, steps=50), field="models.small")


# SanaSprintPipeline's own class name and __call__ (what the checks read), without building its components.
_Sprint = type("SanaSprintPipeline", (SanaSprintPipeline,), {"__init__": lambda self: None})


def test_sana_sprint_at_fifty_steps_is_refused_at_build_time():
    assert "runs only 2 steps while intermediate_timesteps is set" in steps_problem(SanaSprintPipeline, 50)
    assert steps_problem(SanaSprintPipeline, 2) is None
    with pytest.raises(CapabilityError, match=r"^models.small.num_inference_steps: SanaSprintPipeline runs only 2"):
        check_model_capabilities(_Sprint(), ModelNeeds(refine=True, steps=50), field="models.small")
    check_model_capabilities(_Sprint(), ModelNeeds(refine=True, steps=2), field="models.small")


def test_a_pipeline_without_latents_cannot_resume():
    class NoLatents:
        def __call__(self, prompt, callback_on_step_end=None):
            pass

    assert "takes no latents" in resume_problem(NoLatents, object())


def test_a_generator_checks_its_own_model_for_the_mode(pipes):
    from modm.generation import DiffusionGenerator

    spec = ModelSpec(source="tiny-sana", device="cpu", default_size=32, max_size=256)
    small = DiffusionGenerator(pipes["sana"], spec, "small")
    small.check_capabilities(model_needs(SystemMode.MODM, "small", spec))
    with pytest.raises(CapabilityError, match=r"^models.small.source: DPMSolverMultistepScheduler is a multistep"):
        small.check_capabilities(ModelNeeds(resume=True))


@pytest.fixture(scope="module")
def saved(pipes, tmp_path_factory):
    """The tiny pipelines saved as directories: the build-time check reads only their configs."""
    root = tmp_path_factory.mktemp("saved")
    paths = {}
    for name in ("sd3", "flux", "sdxl"):
        pipes[name].save_pretrained(root / name)
        paths[name] = str(root / name)
    return paths


def test_build_time_check_reads_configs_only(saved):
    from modm.generation.capabilities import check_spec_capabilities, pipeline_classes

    classes = pipeline_classes(ModelSpec(source=saved["flux"]))
    assert classes.pipeline.__name__ == "FluxPipeline"
    assert classes.denoiser.__name__ == "FluxTransformer2DModel"
    assert type(classes.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"

    flux_parallel = ModelSpec(source=saved["flux"], parallel=ParallelConfig(method="distrifusion", world_size=2))
    with pytest.raises(CapabilityError) as err:
        check_spec_capabilities(
            flux_parallel, model_needs(SystemMode.VANILLA, "large", flux_parallel), field="models.large"
        )
    assert err.value.field == "models.large.parallel.method"
    sdxl = ModelSpec(source=saved["sdxl"])
    with pytest.raises(CapabilityError, match="init_noise_sigma") as err:
        check_spec_capabilities(sdxl, model_needs(SystemMode.NIRVANA, "large", sdxl), field="models.large")
    assert err.value.field == "models.large.source"
    for name in ("sd3", "flux"):  # what the mode needs, they can do
        spec = ModelSpec(source=saved[name])
        check_spec_capabilities(spec, model_needs(SystemMode.NIRVANA, "large", spec), field="models.large")
    check_spec_capabilities(sdxl, model_needs(SystemMode.MODM, "small", sdxl), field="models.small")


def test_build_app_refuses_what_the_mode_cannot_do(saved, tmp_path):
    from deployments.app import build_app

    system = {
        "mode": "nirvana",
        "models": {"large": {"source": saved["sdxl"], "device": "cpu"}},
        "embedder": {"kind": "minilm", "device": "cpu", "retrieval": "text-text"},
        "cache": {"directory": str(tmp_path / "cache")},
        "policy": {"k_table": "nirvana"},
    }
    with pytest.raises(ConfigError, match=r"models\.large\.source: .*init_noise_sigma"):
        build_app({"system": system, "check_resources": False})
