"""The benchmark's quality table: FID of each system against the reference system's images."""

import numpy as np
import pytest

from modm.quality import QualityInputError, load_image_set
from modm.quality.errors import LowRankCovarianceError
from modm.quality.images import ImageEntry
from modm.quality.systems import compare_systems, format_system_table
from tests.quality.conftest import write_folder


class PromptLength:
    """A stand-in prompt metric: deterministic, no model."""

    name = "prompt_len"

    def score(self, images, prompts):
        return np.array([len(p) for p in prompts], dtype=np.float64)


def test_reference_scores_zero_and_a_copy_of_it_too(tmp_path, inception):
    prompts = [f"prompt {i}" for i in range(70)]
    reference = load_image_set(write_folder(tmp_path / "ref", prompts, seed=0))
    same = load_image_set(write_folder(tmp_path / "same", prompts, seed=0))
    other = [
        ImageEntry(e.path, e.prompt, hit=i % 2 == 0)
        for i, e in enumerate(load_image_set(write_folder(tmp_path / "other", prompts, seed=500)))
    ]
    rows = compare_systems(
        {"vanilla": reference, "copy": same, "other": other}, "vanilla", [PromptLength()], inception, is_splits=2
    )
    by = {row.system: row for row in rows}
    assert by["vanilla"].fid_vs_reference == 0.0 and by["copy"].fid_vs_reference == pytest.approx(0.0, abs=1e-6)
    assert by["other"].fid_vs_reference > 0 and by["other"].hit_rate == 0.5 and by["vanilla"].hit_rate is None
    assert by["other"].means["prompt_len"] == pytest.approx(np.mean([len(p) for p in prompts]))
    assert all(row.fid_reliable and row.inception_score >= 1.0 for row in rows)
    table = format_system_table(rows, "vanilla")
    assert "FID vs vanilla" in table and "other" in table and "50%" in table


def test_too_few_images_are_refused_before_scoring(tmp_path, inception):
    few = load_image_set(write_folder(tmp_path / "few", ["a", "b", "c"]))
    with pytest.raises(LowRankCovarianceError, match="more than 64 images"):
        compare_systems({"vanilla": few, "modm": few}, "vanilla", [], inception)
    with pytest.raises(QualityInputError, match="reference system 'large'"):
        compare_systems({"vanilla": few}, "large", [], inception)
    rows = compare_systems({"vanilla": few, "modm": few}, "vanilla", [], inception, allow_low_rank=True, is_splits=5)
    assert not rows[1].fid_reliable and rows[1].inception_score is None
    assert "indicative only" in format_system_table(rows, "vanilla")
