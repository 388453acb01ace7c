"""The demo's world workload: deterministic, the shipped file is the generator's output, and it has locality."""

from pathlib import Path

import numpy as np
import pytest

from modm.demo import demo_workload_path, read_workload
from modm.world.demo_workload import (
    REPHRASE,
    VARY,
    world_demo_requests,
    world_demo_workload,
    write_tsv,
)
from modm.world.scene import Scene

SHIPPED = Path(__file__).parents[2] / "modm" / "data" / "world_demo_prompts.tsv"


def test_the_shipped_file_is_the_generators_output(tmp_path):
    assert read_workload(SHIPPED) == world_demo_workload()
    assert read_workload(write_tsv(tmp_path / "w.tsv", world_demo_workload(seed=3))) == world_demo_workload(seed=3)
    assert world_demo_workload(seed=3) != world_demo_workload()


def test_users_rephrase_and_vary_their_previous_prompt():
    rows = world_demo_requests(users=3, requests=400)
    previous: dict[str, Scene] = {}
    same, one_change = 0, 0
    for user, scene, _ in rows:
        if user in previous:
            before = previous[user]
            changes = (
                sum(
                    a.attributes()[k] != b.attributes()[k]
                    for a, b in zip(scene.objects, before.objects)
                    for k in ("shape", "colour", "size", "position")
                )
                if scene.count == before.count
                else 9
            )
            same += changes == 0 and scene == before
            one_change += changes == 1
        previous[user] = scene
    follow_ups = len(rows) - 3
    assert abs(same / follow_ups - REPHRASE) < 0.1  # the same scene, captioned anew
    assert abs(one_change / follow_ups - VARY) < 0.1  # one attribute of one object changed
    assert len({caption.text for _, _, caption in rows}) > 0.7 * len(rows)  # rephrasings, not repeats


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="users"):
        world_demo_workload(users=0)


def test_the_world_config_gets_the_world_workload():
    from modm.config import load_config
    from modm.demo import default_config_path
    from tools.serve_configs import tiny_config_path

    assert demo_workload_path(load_config(default_config_path())).name == "world_demo_prompts.tsv"
    assert demo_workload_path(load_config(tiny_config_path())).name == "demo_prompts.tsv"


def test_a_varied_colour_is_rendered_in_the_new_colour():
    from modm.world.cli import COMMITTED_WORLD
    from modm.world.judge import Judge, score_image
    from modm.world.world import World

    rows = world_demo_requests(users=4, requests=70, seed=5)
    world = World(seed=0)
    readings = Judge.load(COMMITTED_WORLD / "judge").read(np.stack([world.render(scene) for _, scene, _ in rows]))
    colours = [score_image(r, scene, caption.mentions)["colour"] for r, (_, scene, caption) in zip(readings, rows)]
    assert all(colours), f"{colours.count(False)} of {len(rows)} ground-truth renders show another colour"
