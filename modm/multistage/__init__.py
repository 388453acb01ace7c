"""Multi-stage diffusion (Zhang et al., CVPR 2024): timestep clustering, a multi-decoder U-Net, stage-routed training.

Importing this package registers `MultiStageUNet` with Python's module table, which is what
`DiffusionPipeline.from_pretrained` needs to load a pipeline whose `unet` is a MultiStageUNet.
"""

from modm.multistage.boundaries import BoundaryOrderError, SplitMethod, StageBoundaries
from modm.multistage.clustering import (
    ClusteringConfig,
    NoBoundaryError,
    optimal_denoiser_boundaries,
    uniform_log_snr_boundaries,
    uniform_t_boundaries,
)
from modm.multistage.optimal_denoiser import EmptyDatasetError, optimal_eps, posterior_mean
from modm.multistage.routing import apply_by_stage, route_timesteps
from modm.multistage.scheduler_steps import model_timestep_boundaries, stage_per_step, stage_start_steps
from modm.multistage.schedules import ScheduleKind, build_schedule
from modm.multistage.unet import CheckpointClassError, MultiStageUNet, StageCountError

__all__ = [
    "BoundaryOrderError",
    "CheckpointClassError",
    "ClusteringConfig",
    "EmptyDatasetError",
    "MultiStageUNet",
    "NoBoundaryError",
    "ScheduleKind",
    "SplitMethod",
    "StageBoundaries",
    "StageCountError",
    "apply_by_stage",
    "build_schedule",
    "model_timestep_boundaries",
    "optimal_denoiser_boundaries",
    "optimal_eps",
    "posterior_mean",
    "route_timesteps",
    "stage_per_step",
    "stage_start_steps",
    "uniform_log_snr_boundaries",
    "uniform_t_boundaries",
]
