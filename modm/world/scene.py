"""The world's vocabulary and its scenes: one or two objects (shape, colour, size, position) on a coloured background.

A `Scene` is the ground truth of one image. Which (shape, colour) pairs are held out of training is fixed here too,
so that the generator, the judge and the evaluation agree on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np


class Split(str, Enum):
    TRAIN = "train"  # never shows a held-out (shape, colour) pair
    HELDOUT = "heldout"  # every scene has at least one object with a held-out pair


SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "ring")
# Saturated colours, so that they stand out against the desaturated backgrounds.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.72, 0.15),
    "blue": (0.12, 0.25, 0.95),
    "yellow": (0.95, 0.88, 0.10),
    "purple": (0.58, 0.15, 0.80),
    "orange": (1.00, 0.55, 0.00),
    "pink": (1.00, 0.45, 0.72),
    "cyan": (0.05, 0.85, 0.90),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "centre")
# Two objects sit at opposite sides so that two large objects never overlap.
POSITION_PAIRS: tuple[tuple[str, str], ...] = (("left", "right"), ("top", "bottom"))
MAX_OBJECTS = 2

# One held-out colour per shape, all different: every shape and every colour still occurs in training.
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {
        ("circle", "cyan"),
        ("square", "orange"),
        ("triangle", "purple"),
        ("diamond", "red"),
        ("cross", "yellow"),
        ("ring", "green"),
    }
)

# Geometry in units of the image side.
POSITION_CENTRES: dict[str, tuple[float, float]] = {  # (x, y), y down
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "centre": (0.5, 0.5),
}
SIZE_RADII: dict[str, float] = {"small": 0.125, "large": 0.215}
POSITION_JITTER = 0.04  # +- of the side, uniform, per axis
RADIUS_JITTER = 0.10  # +- relative
COLOUR_JITTER = 0.05  # +- per channel
BACKGROUND_GREY = (0.18, 0.82)
BACKGROUND_TINT = 0.06


@dataclass(frozen=True)
class WorldObject:
    shape: str
    colour: str
    size: str
    position: str
    # Rendering detail (ground truth too, not named in captions).
    dx: float = 0.0
    dy: float = 0.0
    radius_scale: float = 1.0
    rgb: tuple[float, float, float] | None = None

    @property
    def is_heldout(self) -> bool:
        return (self.shape, self.colour) in HELDOUT_PAIRS

    def attributes(self) -> dict[str, str]:
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "position": self.position}


@dataclass(frozen=True)
class Scene:
    objects: tuple[WorldObject, ...]  # in POSITIONS order of their position
    background: tuple[float, float, float]

    @property
    def count(self) -> int:
        return len(self.objects)

    @property
    def has_heldout(self) -> bool:
        return any(o.is_heldout for o in self.objects)

    def object_at(self, position: str) -> WorldObject | None:
        return next((o for o in self.objects if o.position == position), None)


def _sample_object(rng: np.random.Generator, position: str, shape: str, colour: str) -> WorldObject:
    base = np.asarray(COLOURS[colour])
    rgb = np.clip(base + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, 3), 0.0, 1.0)
    return WorldObject(
        shape=shape,
        colour=colour,
        size=SIZES[int(rng.integers(len(SIZES)))],
        position=position,
        dx=float(rng.uniform(-POSITION_JITTER, POSITION_JITTER)),
        dy=float(rng.uniform(-POSITION_JITTER, POSITION_JITTER)),
        radius_scale=float(rng.uniform(1 - RADIUS_JITTER, 1 + RADIUS_JITTER)),
        rgb=(float(rgb[0]), float(rgb[1]), float(rgb[2])),
    )


def _sample_pair(rng: np.random.Generator, heldout: bool) -> tuple[str, str]:
    """A (shape, colour) pair from the split's side of the held-out line."""
    if heldout:
        pairs = sorted(HELDOUT_PAIRS)
        return pairs[int(rng.integers(len(pairs)))]
    while True:
        pair = SHAPES[int(rng.integers(len(SHAPES)))], COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
        if pair not in HELDOUT_PAIRS:
            return pair


def sample_scene(rng: np.random.Generator, split: Split) -> Scene:
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    if count == 1:
        positions: tuple[str, ...] = (POSITIONS[int(rng.integers(len(POSITIONS)))],)
    else:
        positions = POSITION_PAIRS[int(rng.integers(len(POSITION_PAIRS)))]
    # HELDOUT: one object (chosen at random) carries a held-out pair; the others may or may not.
    forced = int(rng.integers(count)) if split is Split.HELDOUT else -1
    objects = []
    for i, position in enumerate(positions):
        shape, colour = _sample_pair(rng, heldout=(i == forced))
        objects.append(_sample_object(rng, position, shape, colour))
    grey = rng.uniform(*BACKGROUND_GREY)
    background = np.clip(grey + rng.uniform(-BACKGROUND_TINT, BACKGROUND_TINT, 3), 0.0, 1.0)
    objects.sort(key=lambda o: POSITIONS.index(o.position))
    return Scene(objects=tuple(objects), background=(float(background[0]), float(background[1]), float(background[2])))
