"""Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), mean and std over `splits` chunks.

The images are split into `splits` consecutive chunks (10 in the standard recipe and MoDM's `IS_score.py`); each
chunk's p(y) is the mean of its p(y|x). Logs are taken in float64 from log-softmax and the KL uses `rel_entr`, so
classes with zero probability contribute 0 rather than NaN. Identical images give exactly 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import log_softmax, rel_entr

from modm.quality.errors import QualityInputError

__all__ = ["DEFAULT_IS_SPLITS", "InceptionScore", "inception_score"]

DEFAULT_IS_SPLITS = 10


@dataclass(frozen=True)
class InceptionScore:
    mean: float
    std: float
    n: int
    splits: int


def inception_score(logits: np.ndarray, splits: int = DEFAULT_IS_SPLITS) -> InceptionScore:
    """IS of n images from their (n, classes) logits; needs at least one image per split."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise QualityInputError(f"need (n, classes>=2) logits, got shape {logits.shape}")
    if splits < 1:
        raise QualityInputError(f"splits={splits} must be at least 1")
    n = logits.shape[0]
    if n < splits:
        raise QualityInputError(f"the Inception Score with {splits} splits needs at least {splits} images, got {n}")
    if not np.isfinite(logits).all():
        raise QualityInputError("non-finite logits")
    probs = np.exp(log_softmax(logits, axis=1))  # (n, classes)
    scores = []
    for chunk in np.array_split(probs, splits):
        marginal = chunk.mean(axis=0, keepdims=True)  # (1, classes)
        kl = rel_entr(chunk, marginal).sum(axis=1)  # (m,)
        scores.append(float(np.exp(kl.mean())))
    return InceptionScore(mean=float(np.mean(scores)), std=float(np.std(scores)), n=n, splits=splits)
