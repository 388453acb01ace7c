"""The demo's world prompt workload: users who rephrase and vary their previous prompt (the temporal locality
MoDM's cache exploits), in world captions, deterministic by seed.

Locality model (parameters fixed here): each user starts from a new world scene; each next request of that user
rephrases the same scene with another caption (probability REPHRASE), varies one attribute of one object of it
(colour, size or position; VARY), or starts over with a new scene (the rest). Users take turns at random. The
shipped file modm/data/world_demo_prompts.tsv is `python -m modm.world.demo_workload` with the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from modm.world.captions import Caption, TemplateSet, caption_scene
from modm.world.scene import COLOUR_NAMES, COLOURS, POSITIONS, SIZES, Scene, Split, sample_scene

REPHRASE = 0.5
VARY = 0.3
USERS = 6
REQUESTS = 24
SEED = 0


def vary_scene(scene: Scene, rng: np.random.Generator) -> Scene:
    """The scene with one attribute of one object changed (a position only where it stays free)."""
    i = int(rng.integers(scene.count))
    obj = scene.objects[i]
    attribute = ("colour", "size", "position")[int(rng.integers(3 if scene.count == 1 else 2))]
    choices = {"colour": COLOUR_NAMES, "size": SIZES, "position": POSITIONS}[attribute]
    others = [v for v in choices if v != getattr(obj, attribute)]
    value = others[int(rng.integers(len(others)))]
    # A new colour is rendered in that colour's own hue (the jittered rgb belongs to the old one).
    rendering = {"rgb": tuple(COLOURS[value])} if attribute == "colour" else {}
    changed = dataclasses.replace(obj, **{attribute: value}, **rendering)
    if changed.is_heldout:  # the demo stays on trained pairs
        return scene
    objects = list(scene.objects)
    objects[i] = changed
    return dataclasses.replace(scene, objects=tuple(objects))


def world_demo_workload(users: int = USERS, requests: int = REQUESTS, seed: int = SEED) -> list[tuple[str, str]]:
    """(user, prompt) rows in arrival order."""
    return [(user, caption.text) for user, _, caption in world_demo_requests(users, requests, seed)]


def world_demo_requests(
    users: int = USERS, requests: int = REQUESTS, seed: int = SEED
) -> list[tuple[str, Scene, Caption]]:
    """(user, scene, caption) in arrival order: the prompt is the caption's text; its `mentions` are the attributes
    a judge of the served image checks."""
    if users < 1 or requests < 1:
        raise ValueError(f"users and requests must be >= 1, got users={users}, requests={requests}")
    rng = np.random.default_rng(seed)
    scenes: dict[str, Scene] = {}
    rows = []
    for _ in range(requests):
        user = f"u{int(rng.integers(users)) + 1}"
        draw = rng.random()
        if user not in scenes or draw >= REPHRASE + VARY:
            scenes[user] = sample_scene(rng, Split.TRAIN)
        elif draw >= REPHRASE:
            scenes[user] = vary_scene(scenes[user], rng)
        template_set = TemplateSet.QUERY if rng.random() < 0.3 else TemplateSet.GALLERY
        rows.append((user, scenes[user], caption_scene(scenes[user], rng, template_set)))
    return rows


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    lines = ["user_name\tprompt", *(f"{user}\t{prompt}" for user, prompt in rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, nargs="?", default=Path("modm/data/world_demo_prompts.tsv"))
    parser.add_argument("--users", type=int, default=USERS)
    parser.add_argument("--requests", type=int, default=REQUESTS)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    print(write_tsv(args.out, world_demo_workload(args.users, args.requests, args.seed)))


if __name__ == "__main__":
    main()
