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

    embedder = build_embedder(EmbedderConfig(kind="hf_clip", model=str(COMMITTED_WORLD / "clip"), device="cpu",
                                             batch_size=128))
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
