"""Map stage boundaries onto a diffusers scheduler: the stage of every inference step, and the model's timestep units.

Boundaries are carried across schedules by log-SNR λ, the one quantity every family shares: a DDPM-family
scheduler gives λ = log(ᾱ / (1 − ᾱ)) at its timestep, a flow-matching scheduler λ = 2·log((1 − σ)/σ), and an EDM
scheduler λ = −2·log σ. When the scheduler uses the very schedule the boundaries were found on this is the same as
comparing t directly.
"""

from __future__ import annotations

import torch
from diffusers import (
    DDIMScheduler,
    EDMDPMSolverMultistepScheduler,
    EDMEulerScheduler,
    FlowMatchEulerDiscreteScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from modm.multistage.boundaries import StageBoundaries
from modm.multistage.schedules import (
    DiscreteDDPMSchedule,
    EDMSchedule,
    FlowMatchingSchedule,
    Schedule,
    VPContinuousSchedule,
)

__all__ = [
    "UnsupportedSchedulerError",
    "matching_scheduler",
    "model_timestep_boundaries",
    "stage_per_step",
    "stage_start_steps",
]

_EDM_SCHEDULERS = (EDMEulerScheduler, EDMDPMSolverMultistepScheduler)


class UnsupportedSchedulerError(ValueError):
    """A scheduler whose noise levels this module cannot read."""


def matching_scheduler(schedule: Schedule) -> SchedulerMixin:
    """The diffusers sampler that discretises schedule (VP-SDE β 0.1→20 ≈ DDPM's linear 1e-4→0.02 over 1000)."""
    if isinstance(schedule, DiscreteDDPMSchedule):
        return DDIMScheduler(
            num_train_timesteps=schedule.num_train_timesteps,
            beta_start=schedule.beta_start,
            beta_end=schedule.beta_end,
            beta_schedule=schedule.beta_schedule.value,
        )
    if isinstance(schedule, VPContinuousSchedule):
        steps = 1000
        return DDIMScheduler(
            num_train_timesteps=steps,
            beta_start=schedule.beta_min / steps,
            beta_end=schedule.beta_max / steps,
            beta_schedule="linear",
        )
    if isinstance(schedule, EDMSchedule):
        return EDMEulerScheduler(sigma_min=schedule.sigma_min, sigma_max=schedule.sigma_max, rho=schedule.rho)
    if isinstance(schedule, FlowMatchingSchedule):
        return FlowMatchEulerDiscreteScheduler(shift=1.0)
    raise UnsupportedSchedulerError(f"no matching diffusers scheduler for {type(schedule).__name__}")


def _ddpm_log_snr(scheduler: SchedulerMixin, timesteps: torch.Tensor) -> torch.Tensor:
    log_abar = torch.log(scheduler.alphas_cumprod.to(torch.float64))
    log_snr_table = log_abar - torch.log1p(-torch.exp(log_abar))  # (num_train_timesteps,)
    pos = timesteps.to(torch.float64).clamp(0, len(log_snr_table) - 1)
    lo = pos.floor().long().clamp(max=len(log_snr_table) - 2)
    frac = pos - lo
    return log_snr_table[lo] * (1 - frac) + log_snr_table[lo + 1] * frac


def _step_log_snr(scheduler: SchedulerMixin) -> torch.Tensor:
    """λ at each of scheduler.timesteps (set_timesteps must have been called)."""
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        sigma = scheduler.sigmas[: len(scheduler.timesteps)].to(torch.float64).clamp(1e-12, 1 - 1e-12)
        return 2.0 * (torch.log1p(-sigma) - torch.log(sigma))
    if isinstance(scheduler, _EDM_SCHEDULERS):
        sigma = scheduler.sigmas[: len(scheduler.timesteps)].to(torch.float64)
        return -2.0 * torch.log(sigma)
    if getattr(scheduler, "alphas_cumprod", None) is not None:
        return _ddpm_log_snr(scheduler, scheduler.timesteps)
    raise UnsupportedSchedulerError(
        f"cannot read noise levels from {type(scheduler).__name__}: expected a DDPM-family scheduler "
        "(alphas_cumprod), FlowMatchEulerDiscreteScheduler or an EDM scheduler"
    )


def stage_per_step(boundaries: StageBoundaries, scheduler: SchedulerMixin, num_inference_steps: int) -> list[int]:
    """The stage of every inference step, in sampling order (noise first, so stage indices decrease)."""
    if num_inference_steps <= 0:
        raise ValueError(f"num_inference_steps must be positive, got {num_inference_steps}")
    scheduler.set_timesteps(num_inference_steps)
    return [int(s) for s in boundaries.stage_of_log_snr(_step_log_snr(scheduler))]


def stage_start_steps(
    boundaries: StageBoundaries, scheduler: SchedulerMixin, num_inference_steps: int
) -> dict[int, int | None]:
    """For each stage, the index of the first inference step that runs in it (None if no step does)."""
    stages = stage_per_step(boundaries, scheduler, num_inference_steps)
    return {k: (stages.index(k) if k in stages else None) for k in range(boundaries.num_stages)}


def model_timestep_boundaries(boundaries: StageBoundaries, scheduler: SchedulerMixin) -> tuple[float, ...]:
    """The boundaries in the units of the `timestep` the pipeline passes to the model (for MultiStageUNet config).

    DDPM family: training timesteps (0 … num_train_timesteps − 1). Flow matching: σ·num_train_timesteps.
    EDM: the preconditioned noise c_noise(σ) = ¼·log σ that EDM schedulers pass as the timestep.
    """
    targets = torch.tensor(boundaries.log_snr, dtype=torch.float64)
    if isinstance(scheduler, _EDM_SCHEDULERS):
        sigma = torch.exp(-targets / 2.0)  # inverts λ = −2·log σ
        return tuple(float(v) for v in scheduler.precondition_noise(sigma))
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        sigma = torch.sigmoid(-targets / 2.0)  # inverts λ = 2·log((1 − σ)/σ)
        return tuple(float(v) for v in sigma * scheduler.config.num_train_timesteps)
    if getattr(scheduler, "alphas_cumprod", None) is not None:
        grid = torch.arange(len(scheduler.alphas_cumprod), dtype=torch.float64)
        table = _ddpm_log_snr(scheduler, grid)  # decreasing in timestep
        # Linear interpolation of the timestep at which λ crosses each target.
        idx = torch.searchsorted(-table, -targets).clamp(1, len(table) - 1)
        lam_hi, lam_lo = table[idx - 1], table[idx]
        frac = (lam_hi - targets) / (lam_hi - lam_lo)
        return tuple(float(v) for v in (idx - 1 + frac))
    raise UnsupportedSchedulerError(
        f"{type(scheduler).__name__} passes timesteps this module cannot map to noise levels; "
        "use a DDPM-family, flow-matching or EDM scheduler"
    )
