"""The committed world (modm/world/weights): its manifest, the world CLIP through the ordinary embedder, the judge."""

from __future__ import annotations

import pytest
import torch

from modm.world import World
from modm.world.build import REQUIRED_FOR_EVAL
from modm.world.cli import COMMITTED_WORLD
from modm.world.format import WORLD_FORMAT_VERSION, validate_world_dir


def test_the_committed_manifest_records_command_seed_and_version():
    manifest = validate_world_dir(COMMITTED_WORLD, REQUIRED_FOR_EVAL)
    assert manifest.format_version == WORLD_FORMAT_VERSION
    assert manifest.command == f"modm world build modm/world/weights --seed {manifest.seed}"
    for name in REQUIRED_FOR_EVAL:
        assert manifest.components[name].info["train_seconds"] > 0


def test_the_committed_world_clip_retrieves_far_above_chance():
    from modm.config.schema import EmbedderConfig
    from modm.embedding.embedder import build_embedder
    from modm.world.eval import retrieval_accuracy

    embedder = build_embedder(
        EmbedderConfig(kind="hf_clip", model=str(COMMITTED_WORLD / "clip"), device="cpu", batch_size=128)
    )
    # 100 images: chance is about 1/100 (a little more where scenes repeat)
    assert retrieval_accuracy(embedder, World(seed=0), gallery_size=100) >= 0.7


def test_the_committed_judge_reads_ground_truth_images():
    from modm.world.eval import EVAL_PROMPTS_START
    from modm.world.judge import Judge, accuracy, score_image

    judge = Judge.load(COMMITTED_WORLD / "judge", torch.device("cpu"))
    samples = World(seed=0).samples(EVAL_PROMPTS_START, 200)
    acc = accuracy([score_image(r, s.scene) for r, s in zip(judge.read([s.image for s in samples]), samples)])
    assert acc["all"] >= 0.9


@pytest.mark.parametrize("seed", [0])
def test_clip_training_is_deterministic_by_seed(seed):
    from modm.world.clip import ClipTrainSpec, train_clip

    spec = ClipTrainSpec(seed=seed, steps=2, batch_size=8, train_images=16, warmup_steps=1)
    world = World(seed=seed)
    a = train_clip(world, spec)[0].state_dict()
    b = train_clip(world, spec)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_eval_of_the_renderer_scores_high_and_of_other_images_low():
    from modm.embedding.hf_clip import HfClipEmbedder
    from modm.world.eval import (
        evaluate_generator,
        ground_truth_generator,
        other_image_generator,
    )
    from modm.world.judge import Judge

    world = World(seed=0)
    judge = Judge.load(COMMITTED_WORLD / "judge", torch.device("cpu"))
    scorer = HfClipEmbedder(COMMITTED_WORLD / "clip_score", device=torch.device("cpu"), batch_size=128)
    real = judge.features([s.image for s in world.samples(2_000_000, 10)])  # 40 images are too few for FID anyway
    truth = evaluate_generator(
        "truth", ground_truth_generator(world), world, judge, scorer, 40, heldout_samples=40, real=real
    )
    other = evaluate_generator(
        "other", other_image_generator(world), world, judge, scorer, 40, heldout_samples=40, real=real
    )
    assert truth.judge["all"] >= 0.95 and truth.judge_heldout["all"] >= 0.95
    assert other.judge["all"] <= 0.2 and other.judge_heldout["all"] <= 0.2
    assert truth.clip_score > other.clip_score + 5
    assert truth.fid is None and "not reported" in truth.fid_note
