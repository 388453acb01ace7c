"""Captions of a scene from templates and synonyms, so that paraphrases exist and text similarity has gradations.

Two disjoint template sets: GALLERY templates caption the images (training data, cached prompts, diffusion prompts);
QUERY templates are reserved for paraphrase queries (retrieval evaluation, users rephrasing). Every caption names
each object's shape and colour; a template may leave out size or position, and the caption records what it mentions.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from modm.world.scene import Scene, WorldObject

COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "green": ("green", "emerald"),
    "blue": ("blue", "azure"),
    "yellow": ("yellow", "golden"),
    "purple": ("purple", "violet"),
    "orange": ("orange", "tangerine"),
    "pink": ("pink", "rose"),
    "cyan": ("cyan", "turquoise"),
}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc"),
    "square": ("square", "box"),
    "triangle": ("triangle", "wedge"),
    "diamond": ("diamond", "rhombus"),
    "cross": ("cross", "plus sign"),
    "ring": ("ring", "hoop"),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
# "on the left"-style phrases (both template sets) and "left side"-style phrases (queries only).
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "at the left"),
    "right": ("on the right", "at the right"),
    "top": ("at the top", "near the top"),
    "bottom": ("at the bottom", "near the bottom"),
    "centre": ("in the centre", "in the middle"),
}
SIDE_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("left side",),
    "right": ("right side",),
    "top": ("top side", "upper side"),
    "bottom": ("bottom side", "lower side"),
    "centre": ("middle", "centre"),
}

ALL = frozenset({"shape", "colour", "size", "position"})
NO_SIZE = frozenset({"shape", "colour", "position"})
NO_POSITION = frozenset({"shape", "colour", "size"})


class TemplateSet(str, Enum):
    GALLERY = "gallery"
    QUERY = "query"


@dataclass(frozen=True)
class Template:
    name: str
    single: str  # one object: fields {size} {colour} {shape} {where} {side}
    obj: str  # one object inside a two-object caption
    pair: str  # two objects: {first} {second}
    mentions: frozenset[str]


GALLERY_TEMPLATES: tuple[Template, ...] = (
    Template(
        "g-plain", "a {size} {colour} {shape} {where}", "a {size} {colour} {shape} {where}", "{first} and {second}", ALL
    ),
    Template(
        "g-front",
        "{Where}, a {size} {colour} {shape}",
        "a {size} {colour} {shape} {where}",
        "{first}, and {second}",
        ALL,
    ),
    Template("g-nosize", "a {colour} {shape} {where}", "a {colour} {shape} {where}", "{first} and {second}", NO_SIZE),
    Template(
        "g-coloured",
        "a {size} {shape} coloured {colour}, {where}",
        "a {size} {colour} {shape} {where}",
        "two shapes: {first}, {second}",
        ALL,
    ),
    Template(
        "g-noposition", "a {size} {colour} {shape}", "a {size} {colour} {shape}", "{first} and {second}", NO_POSITION
    ),
)
QUERY_TEMPLATES: tuple[Template, ...] = (
    Template(
        "q-side", "a {size} {colour} {shape}, {side}", "a {size} {colour} {shape}, {side}", "{first}; {second}", ALL
    ),
    Template(
        "q-there",
        "there is a {size} {colour} {shape} {where}",
        "a {size} {colour} {shape} {where}",
        "there is {first} beside {second}",
        ALL,
    ),
    Template(
        "q-list", "{colour} {shape}, {size}, {where}", "{colour} {shape}, {size}, {where}", "{first} with {second}", ALL
    ),
)
TEMPLATES: dict[TemplateSet, tuple[Template, ...]] = {
    TemplateSet.GALLERY: GALLERY_TEMPLATES,
    TemplateSet.QUERY: QUERY_TEMPLATES,
}


@dataclass(frozen=True)
class Caption:
    text: str
    template: str
    mentions: frozenset[str]  # the attributes named for every object (shape and colour always)


def _pick(rng: np.random.Generator, words: tuple[str, ...]) -> str:
    return words[int(rng.integers(len(words)))]


def _fields(obj: WorldObject, rng: np.random.Generator) -> dict[str, str]:
    where = _pick(rng, POSITION_PHRASES[obj.position])
    return {
        "size": _pick(rng, SIZE_WORDS[obj.size]),
        "colour": _pick(rng, COLOUR_WORDS[obj.colour]),
        "shape": _pick(rng, SHAPE_WORDS[obj.shape]),
        "where": where,
        "Where": where[0].upper() + where[1:],
        "side": _pick(rng, SIDE_PHRASES[obj.position]),
    }


def caption_with(scene: Scene, template: Template, rng: np.random.Generator) -> Caption:
    fields = [_fields(obj, rng) for obj in scene.objects]
    if scene.count == 1:
        text = template.single.format(**fields[0])
    else:
        first, second = (template.obj.format(**f) for f in fields)
        text = template.pair.format(first=first, second=second)
    return Caption(text=text, template=template.name, mentions=template.mentions)


def caption_scene(scene: Scene, rng: np.random.Generator, template_set: TemplateSet = TemplateSet.GALLERY) -> Caption:
    templates = TEMPLATES[template_set]
    return caption_with(scene, templates[int(rng.integers(len(templates)))], rng)


def vocabulary() -> set[str]:
    """Every word any template or synonym can produce (lower case), for the tokenizer."""
    words: set[str] = set()
    phrase_groups = (COLOUR_WORDS, SHAPE_WORDS, SIZE_WORDS, POSITION_PHRASES, SIDE_PHRASES)
    for group in phrase_groups:
        for phrases in group.values():
            for phrase in phrases:
                words.update(phrase.lower().split())
    for template in GALLERY_TEMPLATES + QUERY_TEMPLATES:
        for text in (template.single, template.obj, template.pair):
            for token in text.replace(",", " ").replace(";", " ").replace(":", " ").split():
                if not token.startswith("{"):
                    words.add(token.lower())
    return words


def scene_matches(scene: Scene, query_scene: Scene, mentions: frozenset[str]) -> bool:
    """Whether `scene` has every attribute a caption of `query_scene` mentions (same object count, objects paired)."""
    if scene.count != query_scene.count:
        return False

    def key(obj: WorldObject) -> tuple[str, ...]:
        return tuple(getattr(obj, a) for a in sorted(mentions))

    return sorted(key(o) for o in scene.objects) == sorted(key(o) for o in query_scene.objects)
