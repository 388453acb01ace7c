"""The closed-form optimal ε-denoiser of an empirical dataset (the paper's Prop. 1).

For training images {y_i} and x_t = a·y + b·ε, the posterior over which image was noised is a softmax over all
N images with log-weights −‖x − a·y_i‖² / (2b²); the optimal ε-prediction is ε*(x) = (x − a·ŷ(x)) / b with
ŷ = Σ w_i y_i. The log-weights are huge and negative at small b, so they are accumulated in float64 with a running
logsumexp over chunks of the dataset (the authors' code does the same with an "exp bias" over batches of 4096).
"""

from __future__ import annotations

import torch

__all__ = ["EmptyDatasetError", "flatten_dataset", "optimal_eps", "posterior_mean"]

DEFAULT_DATA_CHUNK = 4096  # dataset rows per chunk, as in the authors' code


class EmptyDatasetError(ValueError):
    """The dataset for the optimal denoiser has no images."""


def flatten_dataset(data: torch.Tensor) -> torch.Tensor:
    """(N, ...) images → (N, D) float64; raises EmptyDatasetError for N = 0."""
    if data.ndim < 2:
        raise ValueError(f"dataset must be shaped (N, ...) with at least one feature, got shape {tuple(data.shape)}")
    if data.shape[0] == 0:
        raise EmptyDatasetError("the dataset is empty: the optimal denoiser needs at least one training image")
    return data.reshape(data.shape[0], -1).to(torch.float64)


def posterior_mean(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, data: torch.Tensor, *, chunk: int = DEFAULT_DATA_CHUNK
) -> torch.Tensor:
    """ŷ(x) = E[y | x_t = x] under the empirical data distribution.

    Args:
        x: noisy samples (B, ...) with the dataset's per-image shape.
        a, b: the schedule coefficients for each sample, shape (B,).
        data: the training images (N, ...).
    Returns: float64 (B, ...) posterior means.
    """
    flat_data = flatten_dataset(data)  # (N, D)
    flat_x = x.reshape(x.shape[0], -1).to(torch.float64)  # (B, D)
    if flat_x.shape[1] != flat_data.shape[1]:
        raise ValueError(f"samples have {flat_x.shape[1]} values each but dataset images have {flat_data.shape[1]}")
    a = a.to(torch.float64).reshape(-1, 1)  # (B, 1)
    inv_two_var = 1.0 / (2.0 * b.to(torch.float64).reshape(-1, 1) ** 2)  # (B, 1)

    running_lse = torch.full((flat_x.shape[0], 1), -torch.inf, dtype=torch.float64)
    mean = torch.zeros_like(flat_x)
    x_sq = (flat_x**2).sum(1, keepdim=True)  # (B, 1)
    for start in range(0, flat_data.shape[0], chunk):
        y = flat_data[start : start + chunk]  # (n, D)
        # ‖x − a·y‖² = ‖x‖² − 2a·x·y + a²‖y‖², computed as one matmul per chunk.
        sq_dist = x_sq - 2.0 * a * (flat_x @ y.T) + a**2 * (y**2).sum(1)[None, :]
        logits = -sq_dist.clamp_min(0.0) * inv_two_var  # (B, n)
        chunk_lse = torch.logsumexp(logits, dim=1, keepdim=True)
        new_lse = torch.logaddexp(running_lse, chunk_lse)
        mean = mean * torch.exp(running_lse - new_lse) + torch.softmax(logits, dim=1) @ y * torch.exp(
            chunk_lse - new_lse
        )
        running_lse = new_lse
    return mean.reshape(x.shape)


def optimal_eps(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, data: torch.Tensor, *, chunk: int = DEFAULT_DATA_CHUNK
) -> torch.Tensor:
    """ε*(x) = (x − a·ŷ(x)) / b, float64, shaped like x."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    y_hat = posterior_mean(x, a, b, data, chunk=chunk)
    return (x.to(torch.float64) - a.to(torch.float64).reshape(shape) * y_hat) / b.to(torch.float64).reshape(shape)
