"""FID: closed-form values, self-distance 0, symmetry, low rank, sqrtm fallbacks, statistics files."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from modm.quality import (
    FeatureStats,
    FidNumericalError,
    LowRankCovarianceError,
    QualityInputError,
    compute_feature_stats,
    feature_stats,
    frechet_distance,
    load_image_set,
)
from modm.quality.images import PromptSource

from .conftest import write_folder


def _features(seed: int, n: int = 200, d: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((d, d)) / np.sqrt(d)
    return rng.standard_normal((n, d)) @ mixing + rng.standard_normal(d)


def test_closed_form_for_isotropic_gaussians():
    # mu: |0 - 1|^2 * d; traces: d(1 + 4 - 2 * sqrt(1 * 4)) = d.
    d = 8
    a = FeatureStats(np.zeros(d), np.eye(d), n=10_000)
    b = FeatureStats(np.ones(d), 4 * np.eye(d), n=10_000)
    assert frechet_distance(a, b).fid == pytest.approx(d + d, rel=1e-10)


def test_fid_of_a_set_with_itself_is_zero_and_fid_is_symmetric():
    a, b = feature_stats(_features(0)), feature_stats(_features(1))
    assert frechet_distance(a, a).fid == pytest.approx(0.0, abs=1e-8)
    ab, ba = frechet_distance(a, b), frechet_distance(b, a)
    assert ab.fid > 1.0 and ab.reliable and not ab.eps_offset_used
    assert ab.fid == pytest.approx(ba.fid, rel=1e-9)


def test_fewer_images_than_dims_is_an_error_unless_allowed():
    few = feature_stats(_features(0, n=16, d=16))  # rank <= 15 < 16
    many = feature_stats(_features(1))
    with pytest.raises(LowRankCovarianceError, match="more than 16 images"):
        frechet_distance(few, many)
    result = frechet_distance(few, many, allow_low_rank=True)
    assert not result.reliable and np.isfinite(result.fid)
    assert frechet_distance(few, few, allow_low_rank=True).fid == pytest.approx(0.0, abs=1e-6)


def test_eps_offset_retry_when_sqrtm_is_not_finite(monkeypatch):
    a, b = feature_stats(_features(0)), feature_stats(_features(1))
    expected = frechet_distance(a, b).fid
    real_sqrtm, calls = linalg.sqrtm, []

    def flaky_sqrtm(matrix):
        calls.append(matrix)
        return np.full_like(matrix, np.nan) if len(calls) == 1 else real_sqrtm(matrix)

    monkeypatch.setattr("modm.quality.fid.linalg.sqrtm", flaky_sqrtm)
    result = frechet_distance(a, b, eps=1e-6)
    assert result.eps_offset_used and len(calls) == 2
    assert np.allclose(calls[1], (a.sigma + 1e-6 * np.eye(16)) @ (b.sigma + 1e-6 * np.eye(16)))
    assert result.fid == pytest.approx(expected, rel=1e-4)


def test_clearly_complex_square_root_is_an_error():
    # A "covariance" with a negative eigenvalue: sqrt(-1) puts 1j on the diagonal.
    bad = FeatureStats(np.zeros(2), np.diag([1.0, -1.0]), n=10)
    with pytest.raises(FidNumericalError, match="imaginary"):
        frechet_distance(bad, FeatureStats(np.zeros(2), np.eye(2), n=10))


def test_mismatched_statistics_are_refused():
    a = feature_stats(_features(0), extractor="x/64")
    with pytest.raises(QualityInputError, match="dimensions differ"):
        frechet_distance(a, feature_stats(_features(0, d=8)))
    with pytest.raises(QualityInputError, match="different feature extractors"):
        frechet_distance(a, feature_stats(_features(1), extractor="y/64"))


def test_bad_features_are_refused():
    with pytest.raises(QualityInputError, match="at least 2"):
        feature_stats(np.zeros((1, 4)))
    nan = _features(0)
    nan[3, 2] = np.nan
    with pytest.raises(QualityInputError, match="non-finite"):
        feature_stats(nan)


def test_stats_file_round_trip_and_bad_files(tmp_path):
    stats = feature_stats(_features(0), extractor="torchvision-inception-v3/random:0/16")
    loaded = FeatureStats.load(stats.save(tmp_path / "ref.npz"))
    assert loaded.n == 200 and loaded.extractor == stats.extractor
    assert np.array_equal(loaded.mu, stats.mu) and np.array_equal(loaded.sigma, stats.sigma)
    np.savez(tmp_path / "partial.npz", mu=stats.mu)
    with pytest.raises(QualityInputError, match=r"missing \['n', 'sigma'\]"):
        FeatureStats.load(tmp_path / "partial.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(QualityInputError, match="cannot read stats file"):
        FeatureStats.load(tmp_path / "junk.npz")
    with pytest.raises(QualityInputError, match="not found"):
        FeatureStats.load(tmp_path / "absent.npz")
    with pytest.raises(QualityInputError, match=".npz"):
        stats.save(tmp_path / "ref.npy")


def test_inception_fid_of_folders_self_zero_and_symmetric(tmp_path, inception):
    # Different sizes in one folder: every image is resized to 299 px for the network.
    a = load_image_set(
        write_folder(tmp_path / "a", ["p"] * 4, seed=0, sizes=[(48, 48), (64, 40)]), prompts=PromptSource.NONE
    )
    b = load_image_set(write_folder(tmp_path / "b", ["p"] * 4, seed=100), prompts=PromptSource.NONE)
    stats_a, stats_b = compute_feature_stats(a, inception), compute_feature_stats(b, inception)
    assert stats_a.dims == 64 and stats_a.n == 4 and stats_a.extractor == inception.extractor_id
    with pytest.raises(LowRankCovarianceError):
        frechet_distance(stats_a, stats_b)
    self_fid = frechet_distance(stats_a, stats_a, allow_low_rank=True)
    assert self_fid.fid == pytest.approx(0.0, abs=1e-6 * np.trace(stats_a.sigma)) and not self_fid.reliable
    ab = frechet_distance(stats_a, stats_b, allow_low_rank=True).fid
    assert ab > 0 and ab == pytest.approx(frechet_distance(stats_b, stats_a, allow_low_rank=True).fid, rel=1e-6)
