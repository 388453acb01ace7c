"""Optimal denoiser, similarity, the α rule, baseline splits and the mapping onto diffusers schedulers."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from modm.multistage.boundaries import BoundaryOrderError, SplitMethod, StageBoundaries
from modm.multistage.clustering import (
    ClusteringConfig,
    NoBoundaryError,
    alpha_rule,
    optimal_denoiser_boundaries,
    pixel_similarity,
    uniform_log_snr_boundaries,
    uniform_t_boundaries,
)
from modm.multistage.digits import load_digits_images
from modm.multistage.optimal_denoiser import EmptyDatasetError, optimal_eps, posterior_mean
from modm.multistage.scheduler_steps import (
    UnsupportedSchedulerError,
    matching_scheduler,
    model_timestep_boundaries,
    stage_per_step,
    stage_start_steps,
)
from modm.multistage.routing import route_timesteps
from modm.multistage.schedules import DiscreteDDPMSchedule, ScheduleKind, build_schedule


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    images, _ = load_digits_images(8, limit=300)
    return images


def test_posterior_mean_matches_direct_softmax_and_is_chunk_invariant():
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(37, 2, 3, 3, generator=generator, dtype=torch.float64)
    x = torch.randn(5, 2, 3, 3, generator=generator, dtype=torch.float64)
    a, b = torch.tensor([0.9, 0.5, 0.3, 0.99, 0.1]), torch.tensor([0.4, 0.8, 0.9, 0.05, 1.0])
    flat_data, flat_x = data.reshape(37, -1), x.reshape(5, -1)
    logits = -((flat_x[:, None, :] - a[:, None, None] * flat_data[None]) ** 2).sum(-1) / (2 * b[:, None] ** 2)
    expected = (torch.softmax(logits, dim=1) @ flat_data).reshape(x.shape)
    torch.testing.assert_close(posterior_mean(x, a, b, data), expected)
    torch.testing.assert_close(posterior_mean(x, a, b, data, chunk=4), expected)


def test_optimal_eps_is_stable_at_tiny_noise_and_recovers_the_true_noise(digits):
    # b = 1e-4 makes the log-weights about -1e8: without logsumexp every weight underflows to 0 and ε* is NaN.
    generator = torch.Generator().manual_seed(1)
    eps = torch.randn(digits[:4].shape, generator=generator, dtype=torch.float64)
    a, b = torch.full((4,), 1.0, dtype=torch.float64), torch.full((4,), 1e-4, dtype=torch.float64)
    x = digits[:4].double() + 1e-4 * eps
    eps_star = optimal_eps(x, a, b, digits)
    assert torch.isfinite(eps_star).all()
    torch.testing.assert_close(eps_star, eps, atol=1e-6, rtol=0)


def test_empty_dataset_is_rejected():
    with pytest.raises(EmptyDatasetError, match="empty"):
        posterior_mean(torch.zeros(1, 4), torch.ones(1), torch.ones(1), torch.zeros(0, 4))
    with pytest.raises(EmptyDatasetError):
        optimal_denoiser_boundaries(torch.zeros(0, 1, 8, 8), build_schedule("vp"), ClusteringConfig())


def test_pixel_similarity_counts_entries_within_eta():
    a = torch.zeros(2, 4)
    b = torch.tensor([[0.0, 0.005, 0.02, 1.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(pixel_similarity(a, b, 0.01), torch.tensor([0.5, 1.0], dtype=torch.float64))


def test_alpha_rule_on_known_curves():
    t = torch.linspace(0.001, 1.0, 1000, dtype=torch.float64)
    dip = ((t > 0.3) & (t < 0.7)).double()  # similarity 1 outside (0.3, 0.7), 0 inside
    t1, t2 = alpha_rule(t, 1 - dip, 1 - dip, alpha=0.9)
    # Running mean of S0 stays ≥ 0.9 until the dip has taken 10% of the samples seen: 0.3 / 0.9 ≈ 0.333.
    assert t1 == pytest.approx(0.3 / 0.9, abs=2e-3)
    assert t2 == pytest.approx(1 - 0.3 / 0.9, abs=2e-3)
    with pytest.raises(NoBoundaryError, match="t1="):
        alpha_rule(t, torch.ones_like(t), torch.ones_like(t), alpha=0.9)  # no dip: t1 = 1 > t2
    with pytest.raises(NoBoundaryError, match="alpha"):
        alpha_rule(t, torch.zeros_like(t), torch.ones_like(t), alpha=0.9)


@pytest.mark.parametrize("kind", list(ScheduleKind))
def test_optimal_denoiser_boundaries_are_ordered_inside_and_seed_stable(digits, kind):
    config = ClusteringConfig(num_samples=400, seed=3)
    schedule = build_schedule(kind)
    first = optimal_denoiser_boundaries(digits, schedule, config)
    again = optimal_denoiser_boundaries(digits, schedule, config)
    t1, t2 = first.boundaries.t
    assert 0.0 < t1 < t2 < 1.0
    assert first.boundaries.t == again.boundaries.t
    assert first.boundaries.method is SplitMethod.OPTIMAL_DENOISER
    # The similarity to the t = 0 denoiser is ~1 at the smallest t and falls in the middle.
    assert first.s0[0] > 0.99 and min(first.s0) < 0.5


def test_boundaries_out_of_order_or_outside_are_rejected():
    schedule = build_schedule("vp")
    with pytest.raises(BoundaryOrderError, match="strictly increase"):
        StageBoundaries(t=(0.6, 0.4), schedule=schedule, method=SplitMethod.UNIFORM_T)
    with pytest.raises(BoundaryOrderError, match="outside"):
        StageBoundaries(t=(0.4, 1.0), schedule=schedule, method=SplitMethod.UNIFORM_T)


def test_baseline_splits():
    schedule = build_schedule("vp")
    assert uniform_t_boundaries(schedule, 3).t == pytest.approx((1 / 3, 2 / 3))
    split = uniform_log_snr_boundaries(schedule, 4, t_min=1e-3)
    lam = [float(schedule.log_snr(torch.tensor(v))) for v in (1e-3, *split.t, 1.0)]
    widths = [lam[i] - lam[i + 1] for i in range(4)]
    assert widths == pytest.approx([widths[0]] * 4, rel=1e-3)
    with pytest.raises(ValueError, match="num_stages"):
        uniform_t_boundaries(schedule, 1)


def test_ddim_steps_follow_the_same_routing_as_the_model():
    schedule = DiscreteDDPMSchedule()
    boundaries = StageBoundaries(t=(0.25, 0.8), schedule=schedule, method=SplitMethod.UNIFORM_T)
    scheduler = matching_scheduler(schedule)
    model_bounds = model_timestep_boundaries(boundaries, scheduler)
    assert model_bounds == pytest.approx((0.25 * 999, 0.8 * 999), abs=1e-3)
    stages = stage_per_step(boundaries, scheduler, 50)
    assert stages == route_timesteps(scheduler.timesteps, model_bounds).tolist()
    assert stages == sorted(stages, reverse=True) and stages[0] == 2 and stages[-1] == 0
    starts = stage_start_steps(boundaries, scheduler, 50)
    assert starts[2] == 0 and 0 < starts[1] < starts[0] < 50


@pytest.mark.parametrize("kind", [ScheduleKind.EDM, ScheduleKind.FLOW, ScheduleKind.VP])
def test_other_schedulers_give_monotone_stages(kind):
    schedule = build_schedule(kind)
    boundaries = uniform_t_boundaries(schedule, 3)
    stages = stage_per_step(boundaries, matching_scheduler(schedule), 30)
    assert stages == sorted(stages, reverse=True) and set(stages) == {0, 1, 2}


def test_flow_model_timesteps_match_step_stages():
    schedule = build_schedule("flow")
    boundaries = StageBoundaries(t=(0.3, 0.7), schedule=schedule, method=SplitMethod.UNIFORM_T)
    scheduler = matching_scheduler(schedule)
    assert model_timestep_boundaries(boundaries, scheduler) == pytest.approx((300.0, 700.0), rel=1e-4)
    stages = stage_per_step(boundaries, scheduler, 20)
    assert stages == route_timesteps(scheduler.timesteps, (300.0, 700.0)).tolist()


def test_edm_model_timesteps_are_preconditioned_noise():
    schedule = build_schedule("edm")
    boundaries = uniform_t_boundaries(schedule, 3)
    scheduler = matching_scheduler(schedule)
    c_noise = model_timestep_boundaries(boundaries, scheduler)
    sigmas = schedule.sigma(torch.tensor(boundaries.t, dtype=torch.float64))
    assert c_noise == pytest.approx(tuple((0.25 * torch.log(sigmas)).tolist()), rel=1e-6)
    # 30 steps: no step sits exactly on a boundary, where float32 timesteps could round either way.
    stages = stage_per_step(boundaries, scheduler, 30)
    assert stages == route_timesteps(scheduler.timesteps, c_noise).tolist()


def test_unsupported_scheduler_and_bad_step_count():
    boundaries = uniform_t_boundaries(build_schedule("ddpm"), 3)

    class NoNoiseLevels:
        timesteps = torch.arange(3)

        def set_timesteps(self, n):
            pass

    with pytest.raises(UnsupportedSchedulerError, match="NoNoiseLevels"):
        stage_per_step(boundaries, NoNoiseLevels(), 3)
    with pytest.raises(ValueError, match="num_inference_steps"):
        stage_per_step(boundaries, DDIMScheduler(), 0)
