"""Stage division by optimal-denoiser clustering (Alg. 1 of Zhang et al., CVPR 2024) and two baseline splits.

Monte Carlo: draw K triples (y_k, ε_k, t_k ~ U[t_min, 1]). Compare the optimal denoiser at t_k with the two
reference denoisers at t = 0 (ε*_0 = ε, the true noise) and t = 1 (the posterior collapses onto the data mean),
each evaluated on the same ε. Similarity D is the fraction of pixels that agree within η. Then
t1 = the largest τ whose running mean of S0 over t_k ≤ τ is still ≥ α, and
t2 = the smallest τ whose running mean of S1 over t_k ≥ τ is ≥ α.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field

from modm.multistage.boundaries import SplitMethod, StageBoundaries
from modm.multistage.optimal_denoiser import DEFAULT_DATA_CHUNK, flatten_dataset, optimal_eps
from modm.multistage.schedules import Schedule

__all__ = [
    "ClusteringConfig",
    "ClusteringResult",
    "NoBoundaryError",
    "alpha_rule",
    "optimal_denoiser_boundaries",
    "pixel_similarity",
    "similarity_samples",
    "uniform_log_snr_boundaries",
    "uniform_t_boundaries",
]


class NoBoundaryError(ValueError):
    """The α rule found no valid t1 < t2 for these samples."""


class ClusteringConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    num_samples: int = Field(default=2000, gt=0, description="K: Monte Carlo triples (y, ε, t).")
    eta: float = Field(
        default=2 / 255, gt=0, description="Pixel tolerance η on ε* (data in [-1, 1]); 2/255 is the authors' value."
    )
    alpha: float = Field(
        default=0.9, gt=0, lt=1, description="Similarity threshold α of the boundary rule (not stated in the paper)."
    )
    t_min: float = Field(default=1e-3, ge=0, lt=1, description="Lower end of t ~ U[t_min, 1].")
    seed: int = Field(default=0, description="Seed of the Monte Carlo draws.")
    batch_size: int = Field(default=256, gt=0, description="Samples per optimal-denoiser batch.")
    data_chunk: int = Field(default=DEFAULT_DATA_CHUNK, gt=0, description="Dataset rows per logsumexp chunk.")


@dataclass(frozen=True)
class ClusteringResult:
    """The boundaries and the Monte Carlo curves behind them (t sorted; S0, S1 in the same order)."""

    boundaries: StageBoundaries
    t: tuple[float, ...]
    s0: tuple[float, ...]
    s1: tuple[float, ...]


def pixel_similarity(eps_a: torch.Tensor, eps_b: torch.Tensor, eta: float) -> torch.Tensor:
    """D: per-sample fraction of entries where |eps_a − eps_b| ≤ η; shape (B,)."""
    if eps_a.shape != eps_b.shape:
        raise ValueError(f"shapes differ: {tuple(eps_a.shape)} vs {tuple(eps_b.shape)}")
    close = (eps_a - eps_b).abs() <= eta
    return close.reshape(close.shape[0], -1).to(torch.float64).mean(1)


def similarity_samples(
    data: torch.Tensor, schedule: Schedule, config: ClusteringConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw the Monte Carlo triples and return (t, S0, S1), each (K,) float64, unsorted."""
    flat = flatten_dataset(data)
    generator = torch.Generator().manual_seed(config.seed)
    n = flat.shape[0]
    t_all = config.t_min + (1.0 - config.t_min) * torch.rand(
        config.num_samples, generator=generator, dtype=torch.float64
    )
    idx_all = torch.randint(0, n, (config.num_samples,), generator=generator)
    eps_all = torch.randn(config.num_samples, flat.shape[1], generator=generator, dtype=torch.float64)
    data_mean = flat.mean(0)
    a1, b1 = schedule.coefficients(torch.ones(1, dtype=torch.float64))

    s0, s1 = [], []
    for start in range(0, config.num_samples, config.batch_size):
        t = t_all[start : start + config.batch_size]
        y, eps = flat[idx_all[start : start + config.batch_size]], eps_all[start : start + config.batch_size]
        a, b = schedule.coefficients(t)
        x_t = a[:, None] * y + b[:, None] * eps
        eps_star_t = optimal_eps(x_t, a, b, flat, chunk=config.data_chunk)
        # t = 0: the posterior is the noised image itself, so ε*_0 is the true noise.
        s0.append(pixel_similarity(eps_star_t, eps, config.eta))
        # t = 1: the posterior is the data mean, evaluated on x_1 built from the same ε.
        x_1 = a1 * y + b1 * eps
        eps_star_1 = (x_1 - a1 * data_mean[None, :]) / b1
        s1.append(pixel_similarity(eps_star_t, eps_star_1, config.eta))
    return t_all, torch.cat(s0), torch.cat(s1)


def alpha_rule(t: torch.Tensor, s0: torch.Tensor, s1: torch.Tensor, alpha: float) -> tuple[float, float]:
    """t1, t2 from the running means of S0 (from t = 0 up) and S1 (from t = 1 down)."""
    order = torch.argsort(t)
    t, s0, s1 = t[order], s0[order], s1[order]
    count = torch.arange(1, len(t) + 1, dtype=torch.float64)
    prefix_mean_s0 = torch.cumsum(s0, 0) / count  # mean over t_k ≤ t[i]
    suffix_mean_s1 = torch.flip(torch.cumsum(torch.flip(s1, [0]), 0), [0]) / torch.flip(count, [0])
    ok_low = torch.nonzero(prefix_mean_s0 >= alpha).flatten()
    ok_high = torch.nonzero(suffix_mean_s1 >= alpha).flatten()
    if len(ok_low) == 0 or len(ok_high) == 0:
        raise NoBoundaryError(
            f"no t reaches similarity α={alpha} to the {'t=0' if len(ok_low) == 0 else 't=1'} denoiser; "
            "lower alpha or raise eta"
        )
    t1, t2 = float(t[ok_low.max()]), float(t[ok_high.min()])
    if not t1 < t2:
        raise NoBoundaryError(
            f"the α rule gave t1={t1:.4f} ≥ t2={t2:.4f} at α={alpha}: the two reference "
            "denoisers overlap; raise alpha or lower eta"
        )
    return t1, t2


def optimal_denoiser_boundaries(data: torch.Tensor, schedule: Schedule, config: ClusteringConfig) -> ClusteringResult:
    """Three-stage boundaries (t1, t2) for data (N, ...) in [-1, 1] on the given schedule."""
    t, s0, s1 = similarity_samples(data, schedule, config)
    t1, t2 = alpha_rule(t, s0, s1, config.alpha)
    order = torch.argsort(t)
    return ClusteringResult(
        boundaries=StageBoundaries(t=(t1, t2), schedule=schedule, method=SplitMethod.OPTIMAL_DENOISER),
        t=tuple(t[order].tolist()),
        s0=tuple(s0[order].tolist()),
        s1=tuple(s1[order].tolist()),
    )


def uniform_t_boundaries(schedule: Schedule, num_stages: int = 3) -> StageBoundaries:
    """Equal widths in t: k / num_stages."""
    if num_stages < 2:
        raise ValueError(f"num_stages must be at least 2, got {num_stages}")
    return StageBoundaries(
        t=tuple(k / num_stages for k in range(1, num_stages)), schedule=schedule, method=SplitMethod.UNIFORM_T
    )


def uniform_log_snr_boundaries(
    schedule: Schedule, num_stages: int = 3, *, t_min: float = 1e-3, grid_size: int = 100_001
) -> StageBoundaries:
    """Equal widths in log-SNR between λ(t_min) and λ(1), mapped back to t on a fine grid."""
    if num_stages < 2:
        raise ValueError(f"num_stages must be at least 2, got {num_stages}")
    grid = torch.linspace(t_min, 1.0, grid_size, dtype=torch.float64)
    lam = schedule.log_snr(grid)  # decreasing
    targets = lam[0] + (lam[-1] - lam[0]) * torch.arange(1, num_stages, dtype=torch.float64) / num_stages
    # First grid point whose λ has fallen to the target (λ is monotone, so searchsorted on -λ).
    idx = torch.searchsorted(-lam, -targets)
    return StageBoundaries(t=tuple(float(grid[i]) for i in idx), schedule=schedule, method=SplitMethod.UNIFORM_LOG_SNR)
