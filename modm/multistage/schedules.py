"""Noise schedules in one form, x_t = a(t)·x0 + b(t)·ε, with t ∈ [0, 1] running from data (0) to noise (1).

The paper writes schedules as x_t = s_t (x0 + σ_t ε); here a = s_t and b = s_t·σ_t, the scale of the data and the
standard deviation of the noise in x-space. Clustering only needs (a, b) and the log-SNR λ = 2·log(a/b), so every
family (VP/DDPM discrete, EDM σ, flow matching) plugs into the same optimal-denoiser code.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal, Union

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "BetaSchedule",
    "DiscreteDDPMSchedule",
    "EDMSchedule",
    "FlowMatchingSchedule",
    "NoiseSchedule",
    "Schedule",
    "ScheduleKind",
    "VPContinuousSchedule",
    "build_schedule",
]


class ScheduleKind(str, Enum):
    VP = "vp"  # score-SDE VP, continuous t (DPM-Solver's setting in the paper)
    DDPM = "ddpm"  # discrete DDPM/DDIM with a beta table (diffusers DDPMScheduler/DDIMScheduler)
    EDM = "edm"  # EDM: a = 1, b = σ(t) on Karras' ρ-spaced σ grid
    FLOW = "flow"  # rectified flow / flow matching: x_t = (1 - t)·x0 + t·ε


class BetaSchedule(str, Enum):
    LINEAR = "linear"  # DDPM: betas linear in [beta_start, beta_end]
    SCALED_LINEAR = "scaled_linear"  # Stable Diffusion: sqrt(betas) linear


class Schedule(BaseModel):
    """Base of every schedule family: x_t = a(t)·x0 + b(t)·ε."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a(t), b(t)) as float64 tensors shaped like t."""
        raise NotImplementedError

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """λ(t) = 2·log(a/b); decreasing in t."""
        a, b = self.coefficients(t)
        return 2.0 * (torch.log(a) - torch.log(b))


class VPContinuousSchedule(Schedule):
    kind: Literal[ScheduleKind.VP] = ScheduleKind.VP
    beta_min: float = Field(default=0.1, gt=0, description="β(0) of the VP-SDE (score_sde default 0.1).")
    beta_max: float = Field(default=20.0, gt=0, description="β(1) of the VP-SDE (score_sde default 20).")

    @model_validator(mode="after")
    def _order(self) -> "VPContinuousSchedule":
        if self.beta_max <= self.beta_min:
            raise ValueError(f"beta_max={self.beta_max} must exceed beta_min={self.beta_min}")
        return self

    def coefficients(self, t):
        t = t.to(torch.float64)
        log_a = -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        a = torch.exp(log_a)
        # -expm1(2·log a) = 1 - a² without cancellation for small t.
        return a, torch.sqrt(-torch.expm1(2.0 * log_a))


class DiscreteDDPMSchedule(Schedule):
    """A diffusers-style beta table; t = timestep / (num_train_timesteps - 1), log ᾱ interpolated between steps."""

    kind: Literal[ScheduleKind.DDPM] = ScheduleKind.DDPM
    num_train_timesteps: int = Field(default=1000, ge=2, description="Length of the beta table.")
    beta_start: float = Field(default=1e-4, gt=0, lt=1, description="First beta (DDPM: 1e-4, SD: 0.00085).")
    beta_end: float = Field(default=0.02, gt=0, lt=1, description="Last beta (DDPM: 0.02, SD: 0.012).")
    beta_schedule: BetaSchedule = Field(default=BetaSchedule.LINEAR, description="How betas are spaced.")

    def alphas_cumprod(self) -> torch.Tensor:
        n = self.num_train_timesteps
        if self.beta_schedule is BetaSchedule.LINEAR:
            betas = torch.linspace(self.beta_start, self.beta_end, n, dtype=torch.float64)
        else:
            betas = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=torch.float64) ** 2
        return torch.cumprod(1.0 - betas, dim=0)

    def coefficients(self, t):
        log_abar = torch.log(self.alphas_cumprod())
        pos = t.to(torch.float64).clamp(0, 1) * (self.num_train_timesteps - 1)
        lo = pos.floor().long().clamp(max=self.num_train_timesteps - 2)
        frac = pos - lo
        log_abar_t = log_abar[lo] * (1 - frac) + log_abar[lo + 1] * frac
        return torch.exp(0.5 * log_abar_t), torch.sqrt(-torch.expm1(log_abar_t))

    def timestep(self, t: float) -> float:
        """The (fractional) training timestep for t."""
        return t * (self.num_train_timesteps - 1)


class EDMSchedule(Schedule):
    """EDM: a = 1, b = σ(t) = (σ_min^(1/ρ) + t·(σ_max^(1/ρ) − σ_min^(1/ρ)))^ρ, the ρ-spaced sampling grid."""

    kind: Literal[ScheduleKind.EDM] = ScheduleKind.EDM
    sigma_min: float = Field(default=0.002, gt=0, description="Smallest σ (EDM default 0.002).")
    sigma_max: float = Field(default=80.0, gt=0, description="Largest σ (EDM default 80).")
    rho: float = Field(default=7.0, gt=0, description="Karras ρ: how densely σ is sampled near σ_min.")

    @model_validator(mode="after")
    def _order(self) -> "EDMSchedule":
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"sigma_max={self.sigma_max} must exceed sigma_min={self.sigma_min}")
        return self

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return (lo + t.to(torch.float64) * (hi - lo)) ** self.rho

    def coefficients(self, t):
        sigma = self.sigma(t)
        return torch.ones_like(sigma), sigma


class FlowMatchingSchedule(Schedule):
    """x_t = (1 − t)·x0 + t·ε. t is clipped to [t_eps, 1 − t_eps] so that a and b stay positive."""

    kind: Literal[ScheduleKind.FLOW] = ScheduleKind.FLOW
    t_eps: float = Field(default=1e-5, gt=0, lt=0.5, description="Keeps a(t) and b(t) away from 0 at the ends.")

    def coefficients(self, t):
        t = t.to(torch.float64).clamp(self.t_eps, 1 - self.t_eps)
        return 1.0 - t, t


NoiseSchedule = Annotated[
    Union[VPContinuousSchedule, DiscreteDDPMSchedule, EDMSchedule, FlowMatchingSchedule],
    Field(discriminator="kind"),
]


def build_schedule(kind: ScheduleKind | str) -> Schedule:
    """The default schedule of a family (the constants the paper's code uses)."""
    kind = ScheduleKind(kind)
    return {
        ScheduleKind.VP: VPContinuousSchedule,
        ScheduleKind.DDPM: DiscreteDDPMSchedule,
        ScheduleKind.EDM: EDMSchedule,
        ScheduleKind.FLOW: FlowMatchingSchedule,
    }[kind]()
