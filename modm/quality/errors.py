"""Errors of the quality tools. All are `ValueError`s so callers (and the CLI) can treat them as bad input."""

from __future__ import annotations

__all__ = ["FidNumericalError", "LowRankCovarianceError", "QualityInputError"]


class QualityInputError(ValueError):
    """Images, prompts, manifests or statistics the metrics cannot use; the message names the file or value."""


class LowRankCovarianceError(QualityInputError):
    """Too few images for a full-rank feature covariance: the FID would be unreliable."""


class FidNumericalError(ValueError):
    """The matrix square root in the FID failed (non-finite or clearly complex), even with the eps offset."""
