"""Judging served images against the world trace's prompts (modm.world.served), with the committed world."""

import pytest
from PIL import Image

from modm.world.cli import COMMITTED_WORLD
from modm.world.demo_workload import world_demo_requests
from modm.world.served import ServedJudge, trace_truth
from modm.world.world import World


@pytest.fixture(scope="module")
def served_judge():
    return ServedJudge(COMMITTED_WORLD, real_images=100)


def rendered_trace(users: int, requests: int, seed: int):
    """A world trace's truth, its scenes rendered by the world itself, and its prompts."""
    rows = world_demo_requests(users=users, requests=requests, seed=seed)
    world = World(seed=0)
    images = [Image.fromarray(world.render(scene)) for _, scene, _ in rows]
    return trace_truth(rows), images, [caption.text for _, _, caption in rows]


def test_the_renderers_images_score_high_and_a_shuffle_scores_low(served_judge):
    truth, images, prompts = rendered_trace(4, 70, 5)

    right = served_judge.evaluate("renderer", images, prompts, truth)
    assert right.samples == 70 and right.judge["shape_colour"] > 0.8, right.judge
    # 70 images: more than the judge's 64 feature dimensions, so FID is reported.
    assert right.fid is not None and right.fid_note == "" and right.clip_score > 0

    wrong = served_judge.evaluate("shifted", images[7:] + images[:7], prompts, truth)
    assert wrong.judge["shape_colour"] < right.judge["shape_colour"] - 0.4, (wrong.judge, right.judge)


def test_few_images_say_why_fid_is_missing_and_foreign_prompts_are_refused(served_judge):
    truth, images, prompts = rendered_trace(2, 5, 1)
    few = served_judge.evaluate("few", images, prompts, truth)
    assert few.fid is None and "FID needs more than" in few.fid_note
    with pytest.raises(ValueError, match="not captions of the trace"):
        served_judge.evaluate("foreign", images, ["a photo of a cat", *prompts[1:]], truth)
    with pytest.raises(ValueError, match="4 images for 5 prompts"):
        served_judge.evaluate("short", images[:4], prompts, truth)


def test_a_request_is_servable_when_an_earlier_image_answers_it(served_judge):
    """With the renderer's images: a request whose scene was drawn before (a rephrase) is servable; the first
    request and images that answer nothing never are."""
    rows = world_demo_requests(users=3, requests=40, seed=2)
    truth, images, prompts = rendered_trace(3, 40, 2)
    servable = served_judge.servable(images, prompts, truth)
    assert len(servable) == 40 and servable[0] is False
    seen = [any(rows[j][1] == rows[i][1] for j in range(i)) for i in range(40)]
    assert sum(seen) >= 5 and all(servable[i] for i in range(40) if seen[i])
    blank = [Image.new("RGB", images[0].size, (128, 128, 128))] * 40
    assert not any(served_judge.servable(blank, prompts, truth))
    with pytest.raises(ValueError, match="4 images for 5 prompts"):
        served_judge.servable(images[:4], prompts[:5], truth)
    with pytest.raises(ValueError, match="not captions of the trace"):
        served_judge.servable(images[:2], ["a photo of a cat", prompts[1]], truth)
