"""`modm world build` (a few steps), the world directory's validation, the hf_clip embedder, `modm world eval`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from modm.world.build import REQUIRED_FOR_EVAL, build_world
from modm.world.format import (
    MANIFEST_NAME,
    WORLD_FORMAT_VERSION,
    WorldFormatError,
    validate_world_dir,
)


def _silent_progress(label, total):
    return lambda step, loss: None


@pytest.fixture(scope="module")
def quick_world(tmp_path_factory):
    """The build command itself, a few steps of each component."""
    from modm.world.cli import main

    out = tmp_path_factory.mktemp("world")
    assert main(["build", str(out), "--seed", "5", "--quick"]) == 0
    return out


def test_only_rebuilds_the_named_steps_and_keeps_the_others(quick_world, tmp_path):
    out = tmp_path / "w"
    shutil.copytree(quick_world, out)
    before = (out / "clip" / "model.safetensors").read_bytes()
    manifest = build_world(out, seed=5, quick=True, only=["judge"], progress=_silent_progress, log=lambda line: None)
    assert set(REQUIRED_FOR_EVAL) <= set(manifest.components) and "--only judge" in manifest.command
    assert (out / "clip" / "model.safetensors").read_bytes() == before
    with pytest.raises(ValueError, match="unknown build step"):
        build_world(out, only=["nope"])


def test_quick_build_writes_every_component_and_a_manifest(quick_world):
    manifest = validate_world_dir(quick_world, REQUIRED_FOR_EVAL)
    assert manifest.format_version == WORLD_FORMAT_VERSION
    assert manifest.seed == 5
    assert manifest.command.startswith("modm world build") and "--seed 5" in manifest.command
    assert set(REQUIRED_FOR_EVAL) <= set(manifest.components)
    assert "train_seconds" in manifest.components["clip"].info


def test_a_missing_component_file_is_refused_with_its_path(quick_world, tmp_path):
    broken = tmp_path / "w"
    shutil.copytree(quick_world, broken)
    (broken / "judge" / "judge.safetensors").unlink()
    with pytest.raises(WorldFormatError, match=r"judge.*judge\.safetensors"):
        validate_world_dir(broken)


def test_a_missing_component_or_other_version_is_refused(quick_world, tmp_path):
    broken = tmp_path / "w"
    shutil.copytree(quick_world, broken)
    with pytest.raises(WorldFormatError, match=r"missing component\(s\) \['not_built'\]"):
        validate_world_dir(broken, (*REQUIRED_FOR_EVAL, "not_built"))
    body = json.loads((broken / MANIFEST_NAME).read_text())
    body["format_version"] = WORLD_FORMAT_VERSION + 1
    (broken / MANIFEST_NAME).write_text(json.dumps(body))
    with pytest.raises(WorldFormatError, match=f"world format {WORLD_FORMAT_VERSION + 1}"):
        validate_world_dir(broken)
    with pytest.raises(WorldFormatError, match="no world.json"):
        validate_world_dir(tmp_path)


def test_the_world_clip_loads_through_the_ordinary_embedder(quick_world):
    from PIL import Image

    from modm.config.schema import EmbedderConfig, Retrieval
    from modm.embedding.embedder import build_embedder, embedding_dim

    cfg = EmbedderConfig(kind="hf_clip", model=str(quick_world / "clip"), device="cpu")
    embedder = build_embedder(cfg)
    assert embedder.retrieval is Retrieval.TEXT_TO_IMAGE and embedder.dim == embedding_dim(cfg)
    text = embedder.embed_text(["a red circle on the left", "a big blue box at the top"])
    images = embedder.embed_images([Image.new("RGB", (32, 32), (200, 0, 0)), Image.new("RGB", (64, 64))])
    for x in (text, images):
        assert x.shape == (2, embedder.dim) and x.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="prompt 0"):
        embedder.embed_text([""])


def test_hf_clip_needs_a_model_directory(tmp_path):
    from pydantic import ValidationError

    from modm.config.schema import EmbedderConfig
    from modm.embedding.embedder import build_embedder

    with pytest.raises(ValidationError, match="hf_clip embedder needs"):
        EmbedderConfig(kind="hf_clip")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        build_embedder(EmbedderConfig(kind="hf_clip", model=str(tmp_path), device="cpu"))


def test_the_text_tower_loads_as_a_pipeline_text_encoder(quick_world):
    import torch
    from transformers import AutoTokenizer, CLIPTextModelWithProjection

    encoder = CLIPTextModelWithProjection.from_pretrained(quick_world / "clip", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(quick_world / "clip")
    ids = tokenizer(
        ["a red circle"], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    out = encoder(ids, output_hidden_states=True)
    assert out.text_embeds.shape == (1, encoder.config.projection_dim)
    assert tokenizer.model_max_length <= encoder.config.max_position_embeddings


def test_eval_on_too_few_images_for_fid_says_so(quick_world, tmp_path, capsys):
    from modm.world.cli import main

    out = tmp_path / "eval.json"
    assert (
        main(["eval", "--world", str(quick_world), "--samples", "8", "--heldout-samples", "4", "--json", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert "FID needs more than 64 images" in printed
    body = json.loads(out.read_text())
    row = body["models"]["ground-truth"]
    assert row["fid"] is None and "not reported" in row["fid_note"]
    assert set(row["judge"]) >= {"shape", "colour", "size", "position", "count", "all"}
    assert set(body["retrieval_top1"]) == {"clip", "clip_score"}


def test_eval_refuses_a_directory_that_is_not_a_world(tmp_path, capsys):
    from modm.world.cli import main

    assert main(["eval", "--world", str(tmp_path), "--samples", "8"]) == 2
    assert "not a world directory" in capsys.readouterr().err
