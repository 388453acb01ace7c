"""A trained miniature world: a seeded generator of captioned images, and models trained in it (CLIP, judge)."""

from modm.world.captions import Caption, TemplateSet, scene_matches
from modm.world.scene import (
    COLOUR_NAMES,
    HELDOUT_PAIRS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    Split,
    WorldObject,
)
from modm.world.world import DEFAULT_IMAGE_SIZE, World, WorldSample

__all__ = [
    "COLOUR_NAMES",
    "DEFAULT_IMAGE_SIZE",
    "HELDOUT_PAIRS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "Caption",
    "Scene",
    "Split",
    "TemplateSet",
    "World",
    "WorldObject",
    "WorldSample",
    "scene_matches",
]
