"""`python -m modm.quality.cli` on folders and manifests the tests write, with tiny random networks."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modm.quality import ClipScoreConfig, ClipScorer, FeatureStats, load_image_set
from modm.quality.cli import main

from .conftest import write_folder

RANDOM_INCEPTION = ["--inception-weights", "random", "--device", "cpu"]


@pytest.fixture
def served(tmp_path):
    """Six served images: two systems, hits at two k and misses, as a parquet manifest."""
    write_folder(tmp_path / "images", [f"prompt {i}" for i in range(6)], sizes=[(48, 48), (64, 32)])
    pq.write_table(
        pa.table(
            {
                "path": [f"images/img_{i:03d}.png" for i in range(6)],
                "prompt": [f"prompt {i}" for i in range(6)],
                "system": ["modm"] * 4 + ["vanilla"] * 2,
                "hit": [True, True, True, False, False, False],
                "k": pa.array([25, 25, 5, None, None, None], pa.int32()),
            }
        ),
        tmp_path / "served.parquet",
    )
    return tmp_path / "served.parquet"


def test_score_table_per_group(served, tmp_path, open_clip_dir, pick_dirs, capsys):
    out = tmp_path / "quality.json"
    argv = [
        "score",
        str(served),
        "--is-splits",
        "2",
        "--json",
        str(out),
        "--per-image",
        str(tmp_path / "p.parquet"),
        "--clip-model",
        f"local-dir:{open_clip_dir}",
        "--pick-model",
        str(pick_dirs[0]),
        "--pick-processor",
        str(pick_dirs[1]),
        "--batch-size",
        "4",
        *RANDOM_INCEPTION,
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "system=vanilla" in printed and "hit=miss" in printed and "k=25" in printed and "PickScore" in printed
    groups = {(g["group_by"], g["group"]): g for g in json.loads(out.read_text())["groups"]}
    assert {key: g["n"] for key, g in groups.items()} == {
        ("all", "all"): 6,
        ("system", "modm"): 4,
        ("system", "vanilla"): 2,
        ("hit", "hit"): 3,
        ("hit", "miss"): 3,
        ("k", "5"): 1,
        ("k", "25"): 2,
        ("k", "miss"): 3,
    }
    clip = ClipScorer.from_config(ClipScoreConfig(model=f"local-dir:{open_clip_dir}", device="cpu"))
    entries = load_image_set(served)
    from modm.quality.images import load_rgb

    expected = clip.score([load_rgb(e.path) for e in entries], [e.prompt for e in entries])
    assert groups["all", "all"]["means"]["clip"] == pytest.approx(expected.mean(), abs=1e-4)
    assert groups["system", "vanilla"]["means"]["clip"] == pytest.approx(expected[4:].mean(), abs=1e-4)
    assert groups["all", "all"]["inception_score"] >= 1.0 and groups["k", "5"]["inception_score"] is None
    per_image = pq.read_table(tmp_path / "p.parquet")
    assert per_image.num_rows == 6 and np.allclose(per_image["clip"].to_numpy(), expected, atol=1e-4)


def test_ref_stats_then_fid_against_them(tmp_path, capsys):
    folder = write_folder(tmp_path / "ref", ["x"] * 3)
    write_folder(tmp_path / "other", ["x"] * 4, seed=50)
    other = tmp_path / "other.csv"  # two systems' images, for the per-system FID
    other.write_text("path,prompt,system\n" + "".join(f"other/img_{i:03d}.png,x,{'ab'[i % 2]}\n" for i in range(4)))
    stats_path = tmp_path / "ref.npz"
    assert main(["ref-stats", str(folder), str(stats_path), "--dims", "64", *RANDOM_INCEPTION]) == 0
    stats = FeatureStats.load(stats_path)
    assert stats.n == 3 and stats.dims == 64 and stats.extractor == "torchvision-inception-v3/random:0/64"

    # Three images in 64-d: refused without --allow-low-rank, with a message that says why.
    assert main(["fid", str(folder), str(stats_path), "--dims", "64", *RANDOM_INCEPTION]) == 2
    assert "needs more than 64 images" in capsys.readouterr().err

    out = tmp_path / "fid.json"
    assert (
        main(
            [
                "fid",
                str(folder),
                str(stats_path),
                "--dims",
                "64",
                "--allow-low-rank",
                "--json",
                str(out),
                *RANDOM_INCEPTION,
            ]
        )
        == 0
    )
    assert "UNRELIABLE" in capsys.readouterr().out
    assert json.loads(out.read_text())["groups"][0]["fid"] == pytest.approx(0.0, abs=1e-6 * np.trace(stats.sigma))

    assert (
        main(
            [
                "fid",
                str(other),
                str(stats_path),
                "--dims",
                "64",
                "--allow-low-rank",
                "--json",
                str(out),
                "--group-by",
                "system",
                *RANDOM_INCEPTION,
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())["groups"]
    assert [(r["group"], r["n_a"], r["n_b"]) for r in rows] == [("all", 4, 3), ("system=a", 2, 3), ("system=b", 2, 3)]
    assert all(r["fid"] > 0 for r in rows)
    other_vs_ref = rows[0]["fid"]
    assert (
        main(
            ["fid", str(folder), str(other), "--dims", "64", "--allow-low-rank", "--json", str(out), *RANDOM_INCEPTION]
        )
        == 0
    )
    assert other_vs_ref > 0
    assert json.loads(out.read_text())["groups"][0]["fid"] == pytest.approx(other_vs_ref, rel=1e-6)

    # A group too small for a covariance is refused up front, naming the group.
    (tmp_path / "lonely.csv").write_text(other.read_text() + "other/img_000.png,x,c\n")
    assert (
        main(
            [
                "fid",
                str(tmp_path / "lonely.csv"),
                str(stats_path),
                "--dims",
                "64",
                "--allow-low-rank",
                "--group-by",
                "system",
                *RANDOM_INCEPTION,
            ]
        )
        == 2
    )
    assert "group system=c of" in capsys.readouterr().err

    # Statistics from another feature layer are refused rather than compared.
    assert main(["fid", str(folder), str(stats_path), "--dims", "192", "--allow-low-rank", *RANDOM_INCEPTION]) == 2
    assert "holds statistics from 'torchvision-inception-v3/random:0/64'" in capsys.readouterr().err


def test_bad_input_exits_2_with_a_message(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["score", str(tmp_path / "empty"), "--metrics", "is", *RANDOM_INCEPTION]) == 2
    assert "no images in" in capsys.readouterr().err
    write_folder(tmp_path / "noprompts", ["x"])
    (tmp_path / "noprompts" / "img_000.txt").unlink()
    # Prompts are checked before any model loads (this CLIP directory does not even exist).
    assert (
        main(
            [
                "score",
                str(tmp_path / "noprompts"),
                "--metrics",
                "clip",
                "--clip-model",
                f"local-dir:{tmp_path / 'absent'}",
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "no prompt file" in capsys.readouterr().err
    assert main(["fid", str(tmp_path / "stats.npz"), str(tmp_path / "noprompts"), *RANDOM_INCEPTION]) == 2
    assert "put the stats file" in capsys.readouterr().err
    assert main(["ref-stats", str(tmp_path / "noprompts"), str(tmp_path / "s.npz"), "--inception-weights", "file"]) == 2
    assert "need a path" in capsys.readouterr().err


def test_calibration_samples_command(tmp_path, open_clip_dir, capsys):
    write_folder(tmp_path, ["r0", "r1", "f"])
    (tmp_path / "m.csv").write_text(
        "prompt,score,k,refined_path,full_path\n"
        "a fox,0.30,30,img_000.png,img_002.png\na fox,0.27,10,img_001.png,img_002.png\n"
    )
    out = tmp_path / "samples.csv"
    assert (
        main(
            [
                "calibration-samples",
                str(tmp_path / "m.csv"),
                str(out),
                "--clip-model",
                f"local-dir:{open_clip_dir}",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "modm policy calibrate" in capsys.readouterr().out
    rows = out.read_text().splitlines()
    assert rows[0].replace('"', "") == "score,k,quality,full_quality" and len(rows) == 3
