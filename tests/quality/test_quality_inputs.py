"""Image sets (folders, sidecar prompts, manifests), pixel-mode conversion, grouping and the summary table."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from modm.quality import (
    GroupBy,
    ImageEntry,
    ImageSetScores,
    PromptSource,
    QualityInputError,
    group_indices,
    load_image_set,
    load_rgb,
    summarise,
)
from modm.quality.report import format_table

from .conftest import noise_image, write_folder


def test_folder_with_sidecar_prompts(tmp_path):
    write_folder(tmp_path, ["a cat", "a dog", "a cow"])
    (tmp_path / "notes.md").write_text("ignored: not an image")
    entries = load_image_set(tmp_path, system="vanilla")
    assert [e.path.name for e in entries] == ["img_000.png", "img_001.png", "img_002.png"]
    assert [e.prompt for e in entries] == ["a cat", "a dog", "a cow"]
    assert {e.system for e in entries} == {"vanilla"}


def test_images_without_prompts_are_an_error_naming_them(tmp_path):
    write_folder(tmp_path, ["a cat", "a dog"])
    (tmp_path / "img_001.txt").unlink()
    with pytest.raises(QualityInputError, match=r"1 of 2 images .* img_001\.png"):
        load_image_set(tmp_path)
    (tmp_path / "img_000.txt").write_text("   ")
    (tmp_path / "img_001.txt").write_text("ok")
    with pytest.raises(QualityInputError, match="empty prompt.*img_000.png"):
        load_image_set(tmp_path)
    assert len(load_image_set(tmp_path, prompts=PromptSource.NONE)) == 2  # FID needs no prompts


def test_prompts_from_file_names(tmp_path):
    noise_image(0).save(tmp_path / "a_photo_of_a_cat.png")
    assert load_image_set(tmp_path, prompts=PromptSource.FILENAME)[0].prompt == "a photo of a cat"


def test_empty_or_missing_sources(tmp_path):
    with pytest.raises(QualityInputError, match="no images in"):
        load_image_set(tmp_path)
    with pytest.raises(QualityInputError, match="no such folder or manifest"):
        load_image_set(tmp_path / "absent")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(QualityInputError, match="neither a folder nor a manifest"):
        load_image_set(tmp_path / "x.json")


def test_csv_and_parquet_manifests_with_groups(tmp_path):
    images = tmp_path / "images"
    write_folder(images, ["p0", "p1", "p2", "p3"])
    rows = {
        "path": [f"images/img_{i:03d}.png" for i in range(4)],
        "prompt": ["p0", "p1", "p2", "p3"],
        "system": ["modm", "modm", "vanilla", None],
        "hit": [True, False, None, True],
        "k": [25, None, None, 5],
    }
    pq.write_table(pa.table(rows), tmp_path / "m.parquet")
    csv = "path,prompt,system,hit,k\n" + "\n".join(
        f"{p},{q},{s or ''},{'' if h is None else ('hit' if h else 'miss')},{'' if k is None else k}"
        for p, q, s, h, k in zip(*rows.values())
    )
    (tmp_path / "m.csv").write_text(csv)
    for name in ("m.parquet", "m.csv"):
        entries = load_image_set(tmp_path / name, system="fallback")
        assert [e.path for e in entries] == [images / f"img_{i:03d}.png" for i in range(4)]
        assert [(e.system, e.hit, e.k) for e in entries] == [
            ("modm", True, 25),
            ("modm", False, None),
            ("vanilla", None, None),
            ("fallback", True, 5),
        ]


def test_loadgen_records_with_paths_are_a_manifest(tmp_path):
    from modm.workload.records import Outcome, RequestRecord, read_records, write_records

    write_folder(tmp_path / "img", ["a", "b", "c"])
    records = [
        RequestRecord(0, "warm", 0, warm_up=True, outcome=Outcome.OK, mode="modm"),
        RequestRecord(
            1, "a", 1, outcome=Outcome.OK, hit=True, k=25, model="small", mode="modm", path="img/img_000.png"
        ),
        RequestRecord(2, "b", 2, outcome=Outcome.TIMEOUT, mode="modm"),
        RequestRecord(3, "c", 3, outcome=Outcome.OK, hit=False, model="large", mode="modm", path="img/img_002.png"),
    ]
    write_records(tmp_path / "served.parquet", records)  # the load generator's --keep-images records
    assert len(read_records(tmp_path / "served.parquet")[0]) == 4
    entries = load_image_set(tmp_path / "served.parquet")
    assert [(e.path.name, e.prompt, e.system, e.hit, e.k) for e in entries] == [
        ("img_000.png", "a", "modm", True, 25),
        ("img_002.png", "c", "modm", False, None),
    ]


@pytest.mark.parametrize(
    "bad, message",
    [
        ("path,k\nx.png,1\n", r"lacks column\(s\) \['prompt'\]"),
        ("path,prompt,hit\nx.png,a,maybe\n", "row 0: hit='maybe' is not a boolean"),
        ("path,prompt,k\nx.png,a,2.5\n", "row 0: k=2.5 must be a non-negative integer"),
        ("path,prompt\nx.png,\n", "1 row\\(s\\) without a prompt"),
        ("path,prompt\n", "has no rows"),
    ],
)
def test_bad_manifests(tmp_path, bad, message):
    (tmp_path / "m.csv").write_text(bad)
    with pytest.raises(QualityInputError, match=message):
        load_image_set(tmp_path / "m.csv")


def test_pixel_modes_become_8_bit_rgb(tmp_path):
    gray = Image.fromarray(np.full((4, 4), 200, np.uint8), mode="L")
    rgba = Image.fromarray(np.dstack([np.full((4, 4, 3), 10, np.uint8), np.zeros((4, 4), np.uint8)]), mode="RGBA")
    deep = Image.fromarray(np.full((4, 4), 65535, np.uint16))  # 16-bit grayscale, white
    palette = gray.convert("P")
    for name, image, value in [
        ("g.png", gray, 200),
        ("a.png", rgba, 10),
        ("d.png", deep, 255),
        ("p.png", palette, 200),
    ]:
        image.save(tmp_path / name)
        loaded = load_rgb(tmp_path / name)
        assert loaded.mode == "RGB" and np.all(np.asarray(loaded) == value), name
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(QualityInputError, match="cannot read image .*broken.png"):
        load_rgb(tmp_path / "broken.png")


def _entries() -> list[ImageEntry]:
    spec = [
        ("modm", True, 25),
        ("modm", True, 5),
        ("modm", False, None),
        ("vanilla", False, None),
        ("vanilla", None, None),
        (None, True, 25),
    ]
    return [ImageEntry(f"{i}.png", f"p{i}", s, h, k) for i, (s, h, k) in enumerate(spec)]


def test_group_indices():
    entries = _entries()
    assert group_indices(entries, GroupBy.SYSTEM) == {"modm": [0, 1, 2], "unknown": [5], "vanilla": [3, 4]}
    assert group_indices(entries, GroupBy.HIT) == {"hit": [0, 1, 5], "miss": [2, 3], "unknown": [4]}
    assert group_indices(entries, GroupBy.K) == {"5": [1], "25": [0, 5], "miss": [2, 3], "unknown": [4]}


def test_summary_rows_per_group():
    entries = _entries()
    clip = np.array([30.0, 20.0, 25.0, 28.0, 10.0, 40.0])
    logits = np.tile(60.0 * np.eye(2), (3, 1))  # alternating confident classes
    rows = summarise(ImageSetScores(entries, {"clip": clip}, None, logits), [GroupBy.SYSTEM, GroupBy.K], is_splits=2)
    by_name = {(r.group_by, r.group): r for r in rows}
    assert list(by_name)[0] == ("all", "all") and by_name["all", "all"].n == 6
    assert by_name["all", "all"].means["clip"] == pytest.approx(clip.mean())
    assert by_name["system", "modm"].means["clip"] == pytest.approx(25.0)
    assert by_name["system", "modm"].stds["clip"] == pytest.approx(np.std([30, 20, 25]))
    assert by_name["k", "25"].means["clip"] == pytest.approx(35.0)
    # IS per group on the group's own images: modm = rows 0-2 (classes 0, 1, 0) in splits [0, 1] -> 2 and [2] -> 1.
    assert by_name["system", "modm"].inception_score == pytest.approx(1.5)
    assert by_name["system", "modm"].inception_score_std == pytest.approx(0.5)
    # all: splits of classes (0, 1, 0) and (1, 0, 1); KL mean (2 log 1.5 + log 3) / 3 in each.
    assert by_name["all", "all"].inception_score == pytest.approx((1.5**2 * 3) ** (1 / 3))
    assert by_name["k", "5"].inception_score is None and "1 images < 2 splits" in by_name["k", "5"].note
    plain = [ImageEntry(f"{i}.png", "p") for i in range(3)]  # a folder: no system, hit or k
    assert [(r.group_by, r.n) for r in summarise(ImageSetScores(plain, {"clip": clip[:3]}), list(GroupBy))] == [
        ("all", 3)
    ]
    table = format_table(rows)
    assert "system=modm" in table and "k=miss" in table and "CLIPScore" in table and "IS" in table
