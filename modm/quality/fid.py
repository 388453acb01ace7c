"""Fréchet Inception Distance between two feature sets or their saved statistics.

FID = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), computed like pytorch_fid: scipy.linalg.sqrtm of the
product; if that is not finite, retry with `eps` added to both diagonals; keep the real part only when the
imaginary parts on the diagonal are below `IMAGINARY_ATOL`, else raise `FidNumericalError`.

Rank: n images give a covariance of rank at most n - 1, so fewer than dims + 1 images (2049 for the standard 2048-d
features) make S singular and the FID unreliable (biased, and sqrtm is ill-conditioned). That is an error
(`LowRankCovarianceError`) unless `allow_low_rank=True`, which computes it anyway and marks the result
`reliable=False`. MoDM uses 10,000 images per set. Rounding can leave FID(a, a) a hair below zero; within about
sqrt(machine eps) x dims of the covariance traces it is reported as 0, beyond that it is a `FidNumericalError`.

Statistics files (.npz) hold `mu`, `sigma`, `n` and `extractor` (the feature space they were computed in).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import linalg

from modm.quality.errors import FidNumericalError, LowRankCovarianceError, QualityInputError

__all__ = [
    "DEFAULT_SQRTM_EPS",
    "FeatureStats",
    "FidResult",
    "IMAGINARY_ATOL",
    "check_rank",
    "feature_stats",
    "frechet_distance",
]

DEFAULT_SQRTM_EPS = 1e-6  # pytorch_fid's offset
IMAGINARY_ATOL = 1e-3  # pytorch_fid's test for a negligible imaginary part
# sqrtm's rounding on (near-)singular products is about sqrt(machine eps) per dimension, relative to the traces;
# it can leave FID(a, a) a hair below 0. Within that it is reported as 0; anything more negative is an error.
_NEGATIVE_RTOL_PER_DIM = float(np.sqrt(np.finfo(np.float64).eps))


@dataclass(frozen=True)
class FeatureStats:
    mu: np.ndarray  # (d,)
    sigma: np.ndarray  # (d, d)
    n: int
    extractor: str = ""

    def __post_init__(self):
        mu, sigma = np.asarray(self.mu, np.float64), np.asarray(self.sigma, np.float64)
        d = mu.shape[0] if mu.ndim == 1 else -1
        if mu.ndim != 1 or sigma.shape != (d, d):
            raise QualityInputError(f"stats need mu of shape (d,) and sigma (d, d), got {mu.shape} and {sigma.shape}")
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise QualityInputError("stats contain non-finite values")
        if self.n < 2:
            raise QualityInputError(f"stats from n={self.n} images: a covariance needs at least 2")
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "sigma", sigma)

    @property
    def dims(self) -> int:
        return int(self.mu.shape[0])

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix != ".npz":
            raise QualityInputError(f"stats files are .npz, got {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, mu=self.mu, sigma=self.sigma, n=np.int64(self.n), extractor=np.str_(self.extractor))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "FeatureStats":
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = {"mu", "sigma", "n"} - set(data.files)
                if missing:
                    raise QualityInputError(f"{path} is not a stats file: missing {sorted(missing)}")
                extractor = str(data["extractor"]) if "extractor" in data.files else ""
                return cls(data["mu"], data["sigma"], int(data["n"]), extractor)
        except FileNotFoundError:
            raise QualityInputError(f"stats file not found: {path}") from None
        except (OSError, ValueError) as err:
            if isinstance(err, QualityInputError):
                raise
            raise QualityInputError(f"cannot read stats file {path}: {err}") from None


def feature_stats(features: np.ndarray, extractor: str = "") -> FeatureStats:
    """Mean and (unbiased) covariance of (n, d) features."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise QualityInputError(f"features must be (n, d), got shape {features.shape}")
    if features.shape[0] < 2:
        raise QualityInputError(f"FID statistics need at least 2 images, got {features.shape[0]}")
    if not np.isfinite(features).all():
        raise QualityInputError("features contain non-finite values")
    return FeatureStats(features.mean(axis=0), np.cov(features, rowvar=False), features.shape[0], extractor)


@dataclass(frozen=True)
class FidResult:
    fid: float
    n_a: int
    n_b: int
    dims: int
    reliable: bool  # False when either covariance is rank-deficient (allow_low_rank)
    eps_offset_used: bool  # the plain sqrtm was not finite and the eps-offset retry was used


def _sqrtm_trace(
    sigma_a: np.ndarray, sigma_b: np.ndarray, eps: float, *, singular_expected: bool
) -> tuple[float, bool]:
    """Tr((S_a S_b)^(1/2)) and whether the eps offset was needed."""
    offset_used = False
    with warnings.catch_warnings():
        if singular_expected:  # already reported as reliable=False; scipy's "singular" warning adds nothing
            warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma_a @ sigma_b)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma_a.shape[0]) * eps
        covmean = linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
        offset_used = True
        if not np.isfinite(covmean).all():
            raise FidNumericalError(f"the matrix square root is not finite even with eps={eps} on the diagonals")
    if np.iscomplexobj(covmean):
        imaginary = float(np.max(np.abs(np.diagonal(covmean).imag)))
        if imaginary > IMAGINARY_ATOL:
            raise FidNumericalError(
                f"the matrix square root has imaginary parts up to {imaginary:.3g} on its "
                f"diagonal (> {IMAGINARY_ATOL}): the covariances are numerically unusable"
            )
        covmean = covmean.real
    return float(np.trace(covmean)), offset_used


def check_rank(n_a: int, n_b: int, dims: int, *, allow_low_rank: bool) -> bool:
    """Whether either covariance is rank-deficient; raises `LowRankCovarianceError` for that unless allowed."""
    low_rank = min(n_a, n_b) <= dims
    if low_rank and not allow_low_rank:
        raise LowRankCovarianceError(
            f"FID on {dims}-d features needs more than {dims} images per set, got {n_a} and {n_b}: the "
            f"covariance is singular and the FID unreliable. Use more images (10,000 is usual), fewer feature dims, "
            f"or allow_low_rank to compute it anyway (marked unreliable)"
        )
    return low_rank


def frechet_distance(
    a: FeatureStats, b: FeatureStats, *, allow_low_rank: bool = False, eps: float = DEFAULT_SQRTM_EPS
) -> FidResult:
    if a.dims != b.dims:
        raise QualityInputError(f"feature dimensions differ: {a.dims} vs {b.dims}")
    if a.extractor and b.extractor and a.extractor != b.extractor:
        raise QualityInputError(
            f"statistics come from different feature extractors: {a.extractor!r} vs {b.extractor!r}"
        )
    low_rank = check_rank(a.n, b.n, a.dims, allow_low_rank=allow_low_rank)
    trace_sqrt, offset_used = _sqrtm_trace(a.sigma, b.sigma, eps, singular_expected=low_rank)
    diff = a.mu - b.mu
    scale = float(np.trace(a.sigma) + np.trace(b.sigma))
    fid = float(diff @ diff + scale - 2.0 * trace_sqrt)
    if fid < 0:
        if fid < -_NEGATIVE_RTOL_PER_DIM * a.dims * max(scale, 1.0):
            raise FidNumericalError(f"FID came out negative ({fid:.3g}): the matrix square root is inaccurate")
        fid = 0.0  # rounding only
    return FidResult(fid=fid, n_a=a.n, n_b=b.n, dims=a.dims, reliable=not low_rank, eps_offset_used=offset_used)
