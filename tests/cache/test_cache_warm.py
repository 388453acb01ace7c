"""Warm pre-cache from a folder: prompts from sidecars or file names, format conversion, skips, embed_fn."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from cache_testkit import DIM, unit_vector
from PIL import Image

from modm.cache import prompt_for_image, warm_from_folder


def _image(path, color, fmt):
    Image.new("RGB", (8, 8), color).save(path, format=fmt)


class RecordingEmbedder:
    """embed_fn stand-in: one deterministic unit vector per prompt; records what it was given."""

    def __init__(self):
        self.calls = []

    def __call__(self, images, prompts):
        self.calls.append((len(images), list(prompts), [im.mode for im in images]))
        return np.stack([unit_vector(sum(map(ord, p))) for p in prompts])


@pytest.fixture
def folder(tmp_path):
    folder = tmp_path / "precache"
    folder.mkdir()
    _image(folder / "a_red_fox_in_snow.png", (200, 30, 30), "PNG")
    _image(folder / "b.jpg", (30, 200, 30), "JPEG")
    (folder / "b.txt").write_text("  a green meadow at dawn\n", encoding="utf-8")
    _image(folder / "c_blue_sky.webp", (30, 30, 200), "WEBP")
    (folder / "c_blue_sky.txt").write_text("   ", encoding="utf-8")  # blank sidecar: use the name
    (folder / "d_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "notes.md").write_text("not an image")
    Image.new("RGBA", (8, 8), (1, 2, 3, 4)).save(folder / "e_transparent_logo.PNG")
    return folder


def test_warm_admits_every_readable_image(open_cache, folder, caplog):
    cache = open_cache()
    embedder = RecordingEmbedder()
    with caplog.at_level(logging.WARNING):
        report = warm_from_folder(cache, folder, embedder, tenant="shared", source_model="sd35-large", batch_size=2)
    prompts = ["a red fox in snow", "a green meadow at dawn", "c blue sky", "e transparent logo"]
    assert (report.added, report.skipped, report.skipped_files) == (4, 1, ("d_broken.png",))
    assert report.ignored == 3  # two sidecars and the notes
    assert "d_broken.png" in caplog.text
    assert [e.prompt for e in cache.entries()] == prompts
    assert {(e.tenant, e.source_model, e.k) for e in cache.entries()} == {("shared", "sd35-large", 0)}
    assert [call[0] for call in embedder.calls] == [2, 2]  # batches of readable images only
    assert all(mode == "RGB" for call in embedder.calls for mode in call[2])
    # Stored as RGB PNG whatever the source format; retrievable by the embedding embed_fn gave.
    for entry in cache.entries():
        image = Image.open(io.BytesIO(cache.get_png(entry.id)))
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (8, 8))
        assert cache.query(unit_vector(sum(map(ord, entry.prompt))), ["shared"]).entry_id == entry.id
    green = Image.open(io.BytesIO(cache.get_png(cache.entries()[1].id))).getpixel((4, 4))
    assert abs(green[1] - 200) < 10 and green[0] < 60  # the JPEG's content, not a placeholder


def test_prompt_for_image(tmp_path):
    (tmp_path / "x.txt").write_bytes(b"\xff\xfe not utf-8")
    assert prompt_for_image(tmp_path / "x.png") == "x"
    assert prompt_for_image(tmp_path / "___.png") is None
    assert prompt_for_image(tmp_path / "two__words_.jpg") == "two  words"


def test_warm_respects_capacity(open_cache, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(5):
        _image(folder / f"image_{i}.png", (i, i, i), "PNG")
    cache = open_cache(capacity=3)
    report = warm_from_folder(cache, folder, RecordingEmbedder(), tenant="shared", source_model="m")
    assert report.added == 5
    assert [e.prompt for e in cache.entries()] == ["image 2", "image 3", "image 4"]


def test_warm_bad_arguments(open_cache, folder, tmp_path):
    cache = open_cache()
    with pytest.raises(ValueError, match="is not a directory"):
        warm_from_folder(cache, tmp_path / "missing", RecordingEmbedder(), tenant="t", source_model="m")
    with pytest.raises(ValueError, match="tenant must not be empty"):
        warm_from_folder(cache, folder, RecordingEmbedder(), tenant="", source_model="m")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        warm_from_folder(cache, folder, RecordingEmbedder(), tenant="t", source_model="m", batch_size=0)
    with pytest.raises(ValueError, match=rf"embed_fn returned shape \(2, 3\) for 2 images; expected \(2, {DIM}\)"):
        warm_from_folder(
            cache, folder, lambda images, prompts: np.ones((len(images), 3)), tenant="t", source_model="m", batch_size=2
        )
    assert len(cache) == 0


# ------------------------------------------------------------------- from a prompt list: `modm cache warm` (issue 13)
def test_read_prompts_tsv_and_txt(tmp_path):
    from modm.cache import read_prompts

    tsv = tmp_path / "p.tsv"
    tsv.write_text("user_name\tprompt\nu1\ta cat\nu2\ta dog\nu1\ta cat\n\n", encoding="utf-8")
    assert read_prompts(tsv) == ["a cat", "a dog"]  # repeats and blanks dropped
    txt = tmp_path / "p.txt"
    txt.write_text("one\n\n two \nthree\n", encoding="utf-8")
    assert read_prompts(txt, limit=2) == ["one", "two"]
    with pytest.raises(ValueError, match="limit"):
        read_prompts(txt, limit=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_prompts(tmp_path / "nope.txt")


def _warm_config(tmp_path, tiny_zoo, *, serve: bool):
    import yaml

    model = {"device": "cpu", "num_inference_steps": 2, "default_size": 64, "max_size": 64}
    system = {
        "mode": "modm",
        "models": {
            "large": {"source": str(tiny_zoo.large), **model},
            "small": {"source": str(tiny_zoo.small), **model},
        },
        "embedder": {"kind": "open_clip", "model": f"local-dir:{tiny_zoo.clip}", "device": "cpu"},
        "cache": {"directory": str(tmp_path / "cache"), "capacity": 10},
    }
    doc = (
        {"applications": [{"name": "modm", "import_path": "deployments.app:build_app", "args": {"system": system}}]}
        if serve
        else system
    )
    path = tmp_path / ("serve.yaml" if serve else "system.yaml")
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


@pytest.mark.parametrize("serve", [False, True], ids=["system config", "Serve config"])
def test_cli_cache_warm_fills_the_cache_and_resumes(tmp_path, tiny_zoo, capsys, serve):
    import json

    from modm.cache import ImageCache
    from modm.cli import main
    from modm.config import load_config
    from modm.embedding import embedding_dim

    config = _warm_config(tmp_path, tiny_zoo, serve=serve)
    prompts = tmp_path / "prompts.tsv"
    prompts.write_text("user_name\tprompt\nu1\ta red fox\nu2\ta blue lake\nu3\ta green hill\n", encoding="utf-8")
    assert main(["cache", "warm", "--config", str(config), "--prompts", str(prompts), "--limit", "2"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (first["generated"], first["already_cached"], first["cache_entries"]) == (2, 0, 2)
    # A rerun over the whole list generates only the prompt not cached yet.
    assert main(["cache", "warm", "--config", str(config), "--prompts", str(prompts)]) == 0
    captured = capsys.readouterr()
    second = json.loads(captured.out.strip().splitlines()[-1])
    assert (second["generated"], second["already_cached"], second["cache_entries"]) == (1, 2, 3)
    assert "warm: 1/1 generated: a green hill" in captured.err
    cfg = load_config(config)
    with ImageCache(cfg.cache, embedding_dim(cfg.embedder)) as cache:
        entries = cache.entries()
    assert sorted(e.prompt for e in entries) == ["a blue lake", "a green hill", "a red fox"]
    assert {(e.tenant, e.k, e.source_model) for e in entries} == {("default", 0, "large")}


def test_cli_cache_warm_refuses_a_mode_without_an_image_cache(tmp_path, tiny_zoo, capsys):
    import yaml

    from modm.cli import main

    config = _warm_config(tmp_path, tiny_zoo, serve=False)
    system = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**system, "mode": "nirvana", "embedder": {"kind": "minilm", "device": "cpu"}}))
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    assert main(["cache", "warm", "--config", str(config), "--prompts", str(prompts)]) == 2
    assert "cache.warm" in capsys.readouterr().err
