"""The calibration hook: (prompt, refined, full) images -> QualitySamples that `modm policy calibrate` fits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from modm.cli import main as modm_main
from modm.quality import (
    CalibrationPair,
    QualityInputError,
    load_calibration_manifest,
    quality_samples,
    write_quality_samples,
)

from .conftest import noise_image


class MeanBrightness:
    """A deterministic prompt-image metric for the plumbing: mean pixel value plus the prompt length."""

    name = "brightness"

    def __init__(self):
        self.calls: list[str] = []

    def score(self, images, prompts):
        self.calls.extend(prompts)
        return np.array([np.asarray(im, np.float64).mean() + len(p) for im, p in zip(images, prompts)])


def _pairs(tmp_path: Path) -> list[CalibrationPair]:
    for i, value in enumerate([40, 80, 120, 160]):
        noise_image(i).point(lambda _, v=value: v).save(tmp_path / f"refined_{i}.png")
    noise_image(9).point(lambda _: 100).save(tmp_path / "full_a.png")
    noise_image(9).point(lambda _: 50).save(tmp_path / "full_b.png")
    # Prompt "a" refined at two k from one full image; prompt "bb" at two k from another.
    return [
        CalibrationPair("a", 0.31, 30, tmp_path / "refined_0.png", tmp_path / "full_a.png"),
        CalibrationPair("a", 0.29, 25, tmp_path / "refined_1.png", tmp_path / "full_a.png"),
        CalibrationPair("bb", 0.28, 15, tmp_path / "refined_2.png", tmp_path / "full_b.png"),
        CalibrationPair("bb", 0.27, 10, tmp_path / "refined_3.png", tmp_path / "full_b.png"),
    ]


def test_quality_samples_score_refined_and_full_images(tmp_path):
    metric = MeanBrightness()
    samples = quality_samples(_pairs(tmp_path), metric, read_batch=3)
    assert [(s.score, s.k) for s in samples] == [(0.31, 30), (0.29, 25), (0.28, 15), (0.27, 10)]
    assert [s.quality for s in samples] == [41.0, 81.0, 122.0, 162.0]
    assert [s.full_quality for s in samples] == [101.0, 101.0, 52.0, 52.0]
    assert len(metric.calls) == 4 + 2  # each shared full image is scored once


def test_samples_feed_modm_policy_calibrate(tmp_path, capsys):
    samples = quality_samples(_pairs(tmp_path), MeanBrightness())
    path = write_quality_samples(tmp_path / "samples.parquet", samples)
    assert pq.read_table(path).column_names == ["score", "k", "quality", "full_quality"]
    assert modm_main(["policy", "calibrate", str(path), "--min-samples", "1", "--alpha", "0.5"]) == 0
    table = yaml.safe_load(capsys.readouterr().out)["policy"]["k_table"]
    # alpha 0.5: k=30 (41 < 50.5) fails alone; k=25 (81 >= 50.5), k=15 and k=10 pass; a k whose threshold does not
    # beat the larger k's is dropped, so 25 @ 0.29 and 15 @ 0.28 and 10 @ 0.27 remain.
    assert table == [{"min_score": 0.29, "k": 25}, {"min_score": 0.28, "k": 15}, {"min_score": 0.27, "k": 10}]


def test_calibration_manifest(tmp_path):
    _pairs(tmp_path)
    (tmp_path / "m.csv").write_text(
        "prompt,score,k,refined_path,full_path\n"
        "a,0.31,30,refined_0.png,full_a.png\nbb,0.28,15,refined_2.png,full_b.png\n"
    )
    pairs = load_calibration_manifest(tmp_path / "m.csv")
    assert pairs[1] == CalibrationPair("bb", 0.28, 15, tmp_path / "refined_2.png", tmp_path / "full_b.png")
    (tmp_path / "bad.csv").write_text("prompt,score,k,refined_path,full_path\na,0.3,0,r.png,f.png\n")
    with pytest.raises(QualityInputError, match="row 0: k=0 must be a positive integer"):
        load_calibration_manifest(tmp_path / "bad.csv")
    (tmp_path / "short.csv").write_text("prompt,score\na,0.3\n")
    with pytest.raises(QualityInputError, match="lacks column"):
        load_calibration_manifest(tmp_path / "short.csv")
    with pytest.raises(QualityInputError, match=".parquet or .csv"):
        write_quality_samples(tmp_path / "s.json", [])
