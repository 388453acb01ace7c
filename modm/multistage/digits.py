"""scikit-learn's bundled 8×8 digits (1797 images, installed with the package), upscaled, in [-1, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["load_digits_images"]

DIGITS_MAX_INTENSITY = 16.0  # load_digits stores 0..16


def load_digits_images(size: int = 16, *, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, size, size) float32 in [-1, 1] and labels (N,) int64, in the dataset's order."""
    from sklearn.datasets import load_digits

    if size < 8:
        raise ValueError(f"size must be at least the native 8 pixels, got {size}")
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / DIGITS_MAX_INTENSITY  # (N, 1, 8, 8)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return images * 2.0 - 1.0, labels
