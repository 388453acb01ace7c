"""Stage-sampled training: stage distributions, FLOPs per stage, losses fall in every stage; FID helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from modm.multistage.digits import load_digits_images
from modm.multistage.experiment import flops_to_reach
from modm.multistage.quality import frechet_distance
from modm.multistage.routing import route_timesteps
from modm.multistage.training import (
    StageSampledTrainer,
    StageSampling,
    TrainConfig,
    make_stage_validation,
    stage_probabilities,
    stage_timestep_ranges,
)
from modm.multistage.unet import MultiStageUNet

BOUNDARIES = (250.0, 800.0)


def small_unet(decoders=((16, 32), (8, 16), (8, 8)), boundaries=BOUNDARIES) -> MultiStageUNet:
    torch.manual_seed(0)
    return MultiStageUNet(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        decoder_block_out_channels=decoders,
        stage_boundaries=boundaries,
        layers_per_block=1,
        norm_num_groups=4,
    )


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_digits_images(8, limit=512)[0]


def test_stage_timestep_ranges_agree_with_routing():
    ranges = stage_timestep_ranges((221.5, 817.3), 1000)
    assert ranges == [(0, 222), (222, 818), (818, 1000)]
    for k, (lo, hi) in enumerate(ranges):
        assert route_timesteps(torch.tensor([lo, hi - 1]), (221.5, 817.3)).tolist() == [k, k]
    with pytest.raises(ValueError, match="no training timesteps"):
        stage_timestep_ranges((10.2, 10.7), 1000)


def test_stage_probabilities():
    ranges = [(0, 250), (250, 800), (800, 1000)]
    uniform = stage_probabilities(TrainConfig(), ranges)
    torch.testing.assert_close(uniform, torch.full((3,), 1 / 3, dtype=torch.float64))
    by_time = stage_probabilities(TrainConfig(stage_sampling=StageSampling.TIME), ranges)
    torch.testing.assert_close(by_time, torch.tensor([0.25, 0.55, 0.2], dtype=torch.float64))
    weighted = stage_probabilities(TrainConfig(stage_sampling="weights", stage_weights=(2, 1, 1)), ranges)
    torch.testing.assert_close(weighted, torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64))
    with pytest.raises(ValueError, match="2 stage_weights"):
        stage_probabilities(TrainConfig(stage_sampling="weights", stage_weights=(1, 1)), ranges)
    with pytest.raises(ValueError, match="exactly when"):
        TrainConfig(stage_weights=(1, 1, 1))


def test_step_flops_follow_decoder_width_and_match_a_unified_model(digits):
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    config = TrainConfig(batch_size=8)
    multi = StageSampledTrainer(small_unet(decoders=((16, 32), (8, 16), (8, 8))), scheduler, digits, config)
    unified = StageSampledTrainer(small_unet(decoders=((8, 16),), boundaries=()), scheduler, digits, config)
    assert multi.step_flops(0) > multi.step_flops(1) > multi.step_flops(2) > 0
    # Stage 1's decoder has the encoder's widths, so that stage costs exactly what the unified U-Net costs.
    assert multi.step_flops(1) == unified.step_flops(0)


def test_short_training_lowers_the_loss_of_every_stage(digits):
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    trainer = StageSampledTrainer(
        small_unet(), scheduler, digits, TrainConfig(batch_size=32, learning_rate=3e-3, seed=0)
    )
    validation = make_stage_validation(digits, trainer.ranges, per_stage=64, seed=1)
    before = trainer.validation_losses(validation)
    for _ in range(45):
        trainer.step()
    after = trainer.validation_losses(validation)
    assert all(a < b for a, b in zip(after, before)), (before, after)
    assert min(trainer.steps_per_stage) > 0 and sum(trainer.steps_per_stage) == 45
    assert trainer.total_flops == sum(n * trainer.step_flops(k) for k, n in enumerate(trainer.steps_per_stage))


def test_empty_training_set_is_rejected():
    with pytest.raises(ValueError, match="empty"):
        StageSampledTrainer(small_unet(), DDPMScheduler(), torch.zeros(0, 1, 8, 8), TrainConfig())


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # Same covariance, shifted mean: FID is the squared shift.
    assert frechet_distance(a, a + np.array([1.0, 2.0, 0.0])) == pytest.approx(5.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(a[:1], a)


def test_flops_to_reach():
    curve = [{"train_flops": 1, "fid": 9.0}, {"train_flops": 2, "fid": 4.0}, {"train_flops": 3, "fid": 5.0}]
    assert flops_to_reach(curve, 4.5) == 2
    assert flops_to_reach(curve, 1.0) is None


def test_ema_weights_differ_from_raw_weights_and_evaluation_restores_the_raw_ones(digits):
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    trainer = StageSampledTrainer(
        small_unet(), scheduler, digits, TrainConfig(batch_size=16, learning_rate=3e-3, ema_decay=0.999)
    )
    for _ in range(5):
        trainer.step()
    raw = [p.detach().clone() for p in trainer.model.parameters()]
    with trainer.ema_weights() as model:
        swapped = [p.detach().clone() for p in model.parameters()]
    assert any(not torch.equal(r, s) for r, s in zip(raw, swapped))
    for r, s in zip(swapped, trainer.ema.shadow_params):
        torch.testing.assert_close(r, s)
    validation = make_stage_validation(digits, trainer.ranges, per_stage=8, seed=1)
    ema_losses = trainer.validation_losses(validation)
    for before, after in zip(raw, trainer.model.parameters()):
        assert torch.equal(before, after)  # evaluation swapped the EMA weights back out
    trainer.ema = None  # the same trainer without EMA evaluates the raw weights: other losses
    assert trainer.validation_losses(validation) != ema_losses


def test_without_ema_decay_there_is_no_ema(digits):
    trainer = StageSampledTrainer(small_unet(), DDPMScheduler(), digits, TrainConfig(batch_size=4))
    assert trainer.ema is None
    with trainer.ema_weights() as model:
        assert model is trainer.model
