"""The world's VAE and diffusion pipelines: the committed ones load through the ordinary loader and generate; the
build steps that train them run (a few iterations at tiny size); training is deterministic by seed."""

from __future__ import annotations

import shutil

import pytest
import torch

from modm.generation.generator import DiffusionGenerator, GenerationRequest
from modm.models.loading import load_pipeline
from modm.world.cli import COMMITTED_WORLD
from modm.world.format import WorldManifest, validate_world_dir
from modm.world.pipelines import WORLD_IMAGE_SIZE, world_model_spec

ROLES = ("large", "small", "small2")
PROMPT = "a large red circle on the left"


def _committed(role: str):
    manifest = validate_world_dir(COMMITTED_WORLD, (role,))
    return world_model_spec(COMMITTED_WORLD / manifest.components[role].path, role, device="cpu")


@pytest.mark.parametrize("role", ROLES)
def test_committed_pipeline_loads_through_load_pipeline_and_generates_deterministically(role):
    torch.set_num_threads(2)
    generator = DiffusionGenerator(load_pipeline(_committed(role)), _committed(role), role)
    request = GenerationRequest(PROMPT, WORLD_IMAGE_SIZE, WORLD_IMAGE_SIZE, steps=3, seed=7)
    image = generator.txt2img(request)
    assert image.size == (WORLD_IMAGE_SIZE, WORLD_IMAGE_SIZE)
    assert generator.txt2img(request).tobytes() == image.tobytes()
    expected = "StableDiffusion3Pipeline" if role == "large" else "StableDiffusionXLPipeline"
    assert type(generator.pipe).__name__ == expected
    if role != "large":  # the small models refine cache hits by img2img from the same components
        refined = generator.img2img(request, image, strength=0.5)
        assert type(generator.refine_pipe).__name__ == "StableDiffusionXLImg2ImgPipeline"
        assert refined.size == image.size


def test_committed_models_record_their_training():
    manifest = validate_world_dir(COMMITTED_WORLD, ("vae", *ROLES, "step_costs"))
    assert "world build" in manifest.command
    for role in ROLES:
        info = manifest.components[role].info
        assert info["steps"] > 0 and info["train_seconds"] > 0
    # the small models are the cheaper ones per step, alone and at the serving batch
    costs = manifest.components["step_costs"].info
    assert costs["large_step_ms"] > costs["small_step_ms"] > 0
    assert costs["serving_batch_size"] > 1
    assert costs["large_step_ms_serving_batch"] > costs["small_step_ms_serving_batch"]
    assert costs["small_step_ms_serving_batch"] > costs["small2_step_ms_serving_batch"] > 0


def test_model_build_steps_run_for_a_few_iterations(tmp_path):
    """Every model step of `modm world build` runs at tiny size, on the committed CLIP and judge."""
    from modm.world.build import build_world

    committed = WorldManifest.load(COMMITTED_WORLD)
    world_dir = tmp_path / "world"
    world_dir.mkdir()
    seeded = WorldManifest(committed.format_version, "test", committed.seed, committed.image_size)
    for name in ("clip", "judge"):
        record = committed.components.get(name)
        if record is None:  # the judge only adds the VAE's legibility check
            continue
        shutil.copytree(COMMITTED_WORLD / record.path, world_dir / record.path)
        seeded.components[name] = record
    seeded.save(world_dir)
    logged: list[str] = []
    steps = ["vae", *ROLES, "step_costs"]
    manifest = build_world(
        world_dir,
        quick=True,
        only=steps,
        threads=2,
        progress=lambda label, total: lambda step, loss: None,
        log=logged.append,
    )
    assert [line.split(":")[0] for line in logged[:-1]] == steps
    validate_world_dir(world_dir, ("clip", *steps))
    if "judge" in committed.components:
        assert "judge_on_reconstructions" in manifest.components["vae"].info
    for role in ROLES:
        pipe = load_pipeline(world_model_spec(world_dir / role, role, device="cpu"))
        image = pipe(
            prompt=PROMPT,
            num_inference_steps=1,
            guidance_scale=2.0,
            height=32,
            width=32,
            generator=torch.Generator().manual_seed(0),
            **({"max_sequence_length": 1} if role == "large" else {}),
        ).images[0]
        assert image.size == (32, 32)
        assert manifest.components[role].info["steps"] == 3


def test_training_is_deterministic_by_seed():
    from modm.world.diffusion import (
        DiffusionTrainSpec,
        RectifiedFlowObjective,
        TrainingSet,
        train_denoiser,
    )

    def trained():
        from diffusers import SD3Transformer2DModel

        torch.manual_seed(0)
        model = SD3Transformer2DModel(
            sample_size=4,
            patch_size=2,
            in_channels=4,
            out_channels=4,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=16,
            caption_projection_dim=16,
            pooled_projection_dim=8,
            pos_embed_max_size=4,
        )
        data_gen = torch.Generator().manual_seed(1)
        data = TrainingSet(
            latents=torch.randn(8, 4, 4, 4, generator=data_gen),
            prompt_embeds=torch.randn(8, 5, 16, generator=data_gen),
            pooled=torch.randn(8, 8, generator=data_gen),
            null_prompt_embeds=torch.zeros(5, 16),
            null_pooled=torch.zeros(8),
        )
        spec = DiffusionTrainSpec(steps=3, batch_size=4, warmup_steps=1, seed=5)
        loss = train_denoiser(model, RectifiedFlowObjective(), data, spec)
        return loss, model.state_dict()

    (loss_a, a), (loss_b, b) = trained(), trained()
    assert loss_a == loss_b
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_small_schedule_ends_in_pure_noise_where_sdxls_leaks_the_image():
    """Zero terminal SNR: at the last training step the small models' input holds nothing of the image (SDXL's own
    schedule still carries its mean colour, which a model then learns to read and cannot find at inference)."""
    from diffusers import DDPMScheduler

    from modm.world.pipelines import SDXL_SCHEDULER, SMALL_SCHEDULER

    x0 = torch.full((1, 4, 8, 8), 2.0)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    last = torch.tensor([999])
    ztsnr = DDPMScheduler.from_config(SMALL_SCHEDULER).add_noise(x0, noise, last)
    sdxl = DDPMScheduler.from_config(SDXL_SCHEDULER).add_noise(x0, noise, last)
    assert torch.allclose(ztsnr, noise, atol=1e-6)
    assert (sdxl - noise).mean() > 0.1  # 2 * sqrt(alpha_bar) of the image still there


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddpm_objective_regresses_what_the_scheduler_predicts(prediction_type):
    from diffusers import DDPMScheduler

    from modm.world.diffusion import DdpmObjective
    from modm.world.pipelines import SMALL_SCHEDULER

    config = {**SMALL_SCHEDULER, "prediction_type": prediction_type}
    objective = DdpmObjective(config, image_size=32)
    seen = {}

    def model(noisy, t, **kwargs):
        seen["noisy"], seen["t"] = noisy, t
        assert kwargs["added_cond_kwargs"]["time_ids"].tolist() == [[32, 32, 0, 0, 32, 32]] * 3
        return (torch.zeros_like(noisy),)

    x0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    loss = objective.loss(model, x0, torch.zeros(3, 5, 16), torch.zeros(3, 8), torch.Generator().manual_seed(2))
    # replay the objective's draws: t, then the noise
    replay = torch.Generator().manual_seed(2)
    t = torch.randint(0, 1000, (3,), generator=replay)
    noise = torch.randn(x0.shape, generator=replay)
    reference = DDPMScheduler.from_config(config)
    assert torch.equal(seen["t"], t)
    assert torch.allclose(seen["noisy"], reference.add_noise(x0, noise, t))
    target = noise if prediction_type == "epsilon" else reference.get_velocity(x0, noise, t)
    assert torch.isclose(loss, target.pow(2).mean())


def test_ddpm_objective_refuses_a_prediction_type_it_does_not_train():
    from modm.world.diffusion import DdpmObjective
    from modm.world.pipelines import SMALL_SCHEDULER

    with pytest.raises(ValueError, match="sample"):
        DdpmObjective({**SMALL_SCHEDULER, "prediction_type": "sample"}, image_size=32)
