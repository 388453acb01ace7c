"""Stage-sampled training (one stage per step) and the FLOPs each training step costs.

Each step draws one stage from a configurable distribution, then a batch of timesteps inside that stage only, so
the step runs the shared encoder and a single decoder — the paper's recipe (DPM-Solver: uniform over stages). A
unified U-Net is the same trainer with a one-stage model. FLOPs are counted with `torch.utils.flop_counter` on one
forward + backward per stage (they depend only on shapes) and accumulated per step.

With `TrainConfig.ema_decay` set, diffusers' `EMAModel` keeps shadow weights, updated after every optimiser step
(with its warm-up schedule, so short runs average over a window that grows with the step count), and
`validation_losses` and `ema_weights()` evaluate with them, as the paper's models are trained and sampled.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum

import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.utils.flop_counter import FlopCounterMode

from modm.multistage.unet import MultiStageUNet

__all__ = [
    "StageSampledTrainer",
    "StageSampling",
    "StageValidationSet",
    "TrainConfig",
    "make_stage_validation",
    "stage_probabilities",
    "stage_timestep_ranges",
]


class StageSampling(str, Enum):
    UNIFORM = "uniform"  # every stage 1/n (the paper's DPM-Solver variant; oversamples narrow stages)
    TIME = "time"  # ∝ the stage's share of timesteps: the same marginal t as a unified model
    WEIGHTS = "weights"  # the explicit stage_weights


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(default=64, gt=0, description="Images per training step.")
    learning_rate: float = Field(default=2e-3, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    stage_sampling: StageSampling = Field(default=StageSampling.UNIFORM, description="How the step's stage is drawn.")
    stage_weights: tuple[float, ...] | None = Field(
        default=None, description="Relative stage probabilities, low-noise stage first (stage_sampling=weights)."
    )
    seed: int = Field(default=0, description="Seed of batches, stages, timesteps and noise.")
    ema_decay: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Cap of the EMA decay (diffusers EMAModel with warm-up, power 2/3); None: no EMA.",
    )

    @model_validator(mode="after")
    def _weights(self) -> "TrainConfig":
        if (self.stage_sampling is StageSampling.WEIGHTS) != (self.stage_weights is not None):
            raise ValueError("stage_weights must be given exactly when stage_sampling is 'weights'")
        if self.stage_weights is not None and (any(w < 0 for w in self.stage_weights) or sum(self.stage_weights) <= 0):
            raise ValueError(f"stage_weights must be non-negative with a positive sum, got {self.stage_weights}")
        return self


def stage_timestep_ranges(boundaries, num_train_timesteps: int) -> list[tuple[int, int]]:
    """Integer timesteps [lo, hi) of each stage under routing k = #{b ≤ t}."""
    edges = [0] + [math.ceil(b) for b in boundaries] + [num_train_timesteps]
    ranges = list(zip(edges[:-1], edges[1:]))
    for k, (lo, hi) in enumerate(ranges):
        if not 0 <= lo < hi <= num_train_timesteps:
            raise ValueError(f"stage {k} has no training timesteps: [{lo}, {hi}) from boundaries {list(boundaries)}")
    return ranges


def stage_probabilities(config: TrainConfig, ranges: list[tuple[int, int]]) -> torch.Tensor:
    if config.stage_sampling is StageSampling.UNIFORM:
        weights = torch.ones(len(ranges), dtype=torch.float64)
    elif config.stage_sampling is StageSampling.TIME:
        weights = torch.tensor([hi - lo for lo, hi in ranges], dtype=torch.float64)
    else:
        if len(config.stage_weights) != len(ranges):
            raise ValueError(f"{len(config.stage_weights)} stage_weights for a model with {len(ranges)} stages")
        weights = torch.tensor(config.stage_weights, dtype=torch.float64)
    return weights / weights.sum()


@dataclass(frozen=True)
class StageValidationSet:
    """Fixed (x0, ε, t[, condition]) per stage, so losses of different models and checkpoints are comparable."""

    images: list[torch.Tensor]
    noise: list[torch.Tensor]
    timesteps: list[torch.Tensor]
    conditions: list[torch.Tensor] | None = None


def make_stage_validation(
    data: torch.Tensor, ranges: list[tuple[int, int]], per_stage: int, seed: int, conditions: torch.Tensor | None = None
) -> StageValidationSet:
    generator = torch.Generator().manual_seed(seed)
    images, noise, timesteps, picked_conditions = [], [], [], []
    for lo, hi in ranges:
        index = torch.randint(0, len(data), (per_stage,), generator=generator)
        images.append(data[index])
        noise.append(torch.randn(data[index].shape, generator=generator))
        timesteps.append(torch.randint(lo, hi, (per_stage,), generator=generator))
        if conditions is not None:
            picked_conditions.append(conditions[index])
    return StageValidationSet(
        images=images,
        noise=noise,
        timesteps=timesteps,
        conditions=picked_conditions if conditions is not None else None,
    )


class StageSampledTrainer:
    """ε-prediction training of a MultiStageUNet on data (N, C, H, W), one stage per step.

    A text-conditioned model (cross_attention_dim set) needs conditions (N, L, cross_attention_dim): the
    encoder_hidden_states that go with each training image.
    """

    def __init__(
        self,
        model: MultiStageUNet,
        scheduler: DDPMScheduler,
        data: torch.Tensor,
        config: TrainConfig,
        conditions: torch.Tensor | None = None,
    ):
        if len(data) == 0:
            raise ValueError("the training set is empty")
        conditioned = model.config.cross_attention_dim is not None
        if conditioned and (conditions is None or len(conditions) != len(data)):
            raise ValueError(
                f"a text-conditioned model needs one condition per image: {len(data)} images, "
                f"{'no' if conditions is None else len(conditions)} conditions"
            )
        if not conditioned and conditions is not None:
            raise ValueError("conditions were given for an unconditional model (cross_attention_dim=None)")
        self.model, self.scheduler, self.data, self.config = model, scheduler, data, config
        self.conditions = conditions
        self.ranges = stage_timestep_ranges(model.config.stage_boundaries, scheduler.config.num_train_timesteps)
        self.probabilities = stage_probabilities(config, self.ranges)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self._step_flops = [self._measure_step_flops(k) for k in range(len(self.ranges))]
        # After the FLOPs probe, which runs a backward pass but no optimiser step, so the shadow starts at the init.
        self.ema = (
            EMAModel(model.parameters(), decay=config.ema_decay, use_ema_warmup=True, power=2 / 3)
            if config.ema_decay is not None
            else None
        )
        self.total_flops = 0
        self.steps_per_stage = [0] * len(self.ranges)

    def _loss(
        self, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, conditions: torch.Tensor | None = None
    ) -> torch.Tensor:
        noisy = self.scheduler.add_noise(images, noise, timesteps)
        return torch.nn.functional.mse_loss(self.model(noisy, timesteps, conditions).sample, noise)

    def _measure_step_flops(self, stage: int) -> int:
        lo, _ = self.ranges[stage]
        index = torch.arange(self.config.batch_size) % len(self.data)
        images = self.data[index]
        conditions = self.conditions[index] if self.conditions is not None else None
        timesteps = torch.full((self.config.batch_size,), lo, dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            self._loss(images, torch.zeros_like(images), timesteps, conditions).backward()
        self.model.zero_grad(set_to_none=True)
        return int(counter.get_total_flops())

    def step_flops(self, stage: int) -> int:
        """FLOPs of one training step (forward + backward) in stage."""
        return self._step_flops[stage]

    def step(self) -> tuple[int, float]:
        """One optimiser step on one stage; returns (stage, loss)."""
        stage = int(torch.multinomial(self.probabilities, 1, generator=self.generator))
        lo, hi = self.ranges[stage]
        index = torch.randint(0, len(self.data), (self.config.batch_size,), generator=self.generator)
        images = self.data[index]
        noise = torch.randn(images.shape, generator=self.generator)
        timesteps = torch.randint(lo, hi, (self.config.batch_size,), generator=self.generator)
        conditions = self.conditions[index] if self.conditions is not None else None
        loss = self._loss(images, noise, timesteps, conditions)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.step(self.model.parameters())
        self.total_flops += self._step_flops[stage]
        self.steps_per_stage[stage] += 1
        return stage, loss.item()

    @contextmanager
    def ema_weights(self) -> Iterator[MultiStageUNet]:
        """The model with its EMA weights swapped in (the raw weights without EMA); raw weights restored on exit."""
        if self.ema is None:
            yield self.model
            return
        self.ema.store(self.model.parameters())
        self.ema.copy_to(self.model.parameters())
        try:
            yield self.model
        finally:
            self.ema.restore(self.model.parameters())

    @torch.no_grad()
    def validation_losses(self, validation: StageValidationSet) -> list[float]:
        """Mean ε-MSE on each stage's fixed validation samples (with the EMA weights when EMA is on)."""
        conditions = validation.conditions or [None] * len(validation.images)
        with self.ema_weights():
            return [
                float(self._loss(x, n, t, c))
                for x, n, t, c in zip(validation.images, validation.noise, validation.timesteps, conditions)
            ]
