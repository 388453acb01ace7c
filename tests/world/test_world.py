"""The world generator: determinism, coverage of the vocabulary, held-out pairs, captions naming the attributes."""

from __future__ import annotations

import re

import numpy as np
import pytest

from modm.world import (
    COLOUR_NAMES,
    HELDOUT_PAIRS,
    POSITIONS,
    SHAPES,
    SIZES,
    Split,
    World,
    scene_matches,
)
from modm.world.captions import (
    COLOUR_WORDS,
    GALLERY_TEMPLATES,
    POSITION_PHRASES,
    QUERY_TEMPLATES,
    SHAPE_WORDS,
    SIDE_PHRASES,
    SIZE_WORDS,
    vocabulary,
)
from modm.world.scene import Scene, WorldObject


@pytest.fixture(scope="module")
def train_samples():
    return World(seed=3).samples(0, 600)


def test_same_seed_and_index_give_the_same_sample_in_any_order():
    a, b = World(seed=7), World(seed=7)
    first = [a.sample(i) for i in (5, 0, 99)]
    second = [b.sample(i) for i in (99, 0, 5)][::-1]
    for x, y in zip(first, second):
        assert x.caption == y.caption and x.scene == y.scene
        np.testing.assert_array_equal(x.image, y.image)
    assert a.query(5) == b.query(5)


def test_other_seed_or_split_gives_other_samples():
    base = World(seed=7).samples(0, 20)
    other_seed = World(seed=8).samples(0, 20)
    heldout = World(seed=7).samples(0, 20, Split.HELDOUT)
    assert [s.scene for s in base] != [s.scene for s in other_seed]
    assert [s.scene for s in base] != [s.scene for s in heldout]


def test_images_are_rgb_uint8_of_the_requested_size_and_show_the_objects():
    world = World(seed=0, image_size=48)
    s = world.sample(0)
    assert s.image.shape == (48, 48, 3) and s.image.dtype == np.uint8
    background = np.rint(np.asarray(s.scene.background) * 255)
    differs = np.abs(s.image.astype(float) - background).sum(-1) > 30
    assert differs.mean() > 0.01  # the objects cover some pixels


def test_every_attribute_value_occurs(train_samples):
    objects = [o for s in train_samples for o in s.scene.objects]
    assert {o.shape for o in objects} == set(SHAPES)
    assert {o.colour for o in objects} == set(COLOUR_NAMES)
    assert {o.size for o in objects} == set(SIZES)
    assert {o.position for o in objects} == set(POSITIONS)
    assert {s.scene.count for s in train_samples} == {1, 2}
    assert len({tuple(np.round(s.scene.background, 2)) for s in train_samples}) > 100
    assert len({s.caption.template for s in train_samples}) == len(GALLERY_TEMPLATES)


def test_heldout_pairs_never_occur_in_train_and_always_in_heldout(train_samples):
    assert not any(o.is_heldout for s in train_samples for o in s.scene.objects)
    heldout = World(seed=3).samples(0, 200, Split.HELDOUT)
    assert all(s.scene.has_heldout for s in heldout)
    seen = {(o.shape, o.colour) for s in heldout for o in s.scene.objects if o.is_heldout}
    assert seen == set(HELDOUT_PAIRS)
    # every shape and every colour is still trained on
    assert {s for s, _ in HELDOUT_PAIRS} == set(SHAPES)
    assert len({c for _, c in HELDOUT_PAIRS}) == len(HELDOUT_PAIRS)


def _mentions(text: str, words: tuple[str, ...]) -> bool:
    return any(re.search(rf"\b{re.escape(w)}\b", text) for w in words)


def test_captions_name_each_objects_attributes_and_queries_use_reserved_templates(train_samples):
    world = World(seed=3)
    query_names = {t.name for t in QUERY_TEMPLATES}
    assert not query_names & {t.name for t in GALLERY_TEMPLATES}
    for s in train_samples[:200]:
        for caption in (s.caption, world.query(s.index)):
            text = caption.text.lower()
            for o in s.scene.objects:
                assert _mentions(text, SHAPE_WORDS[o.shape]), (text, o)
                assert _mentions(text, COLOUR_WORDS[o.colour]), (text, o)
                if "size" in caption.mentions:
                    assert _mentions(text, SIZE_WORDS[o.size]), (text, o)
                if "position" in caption.mentions:
                    assert _mentions(text, POSITION_PHRASES[o.position] + SIDE_PHRASES[o.position]), (text, o)
            assert set(text.replace(",", " ").replace(";", " ").replace(":", " ").split()) <= vocabulary()
        assert world.query(s.index).template in query_names


def test_paraphrases_vary():
    world = World(seed=1)
    texts = {world.query(4, variant=v).text for v in range(12)}
    assert len(texts) > 3
    assert world.recaption(4, variant=0) == world.sample(4).caption
    assert len({world.recaption(4, variant=v).text for v in range(12)}) > 3


def test_scene_matching_respects_mentions_and_object_count():
    red_left = WorldObject("circle", "red", "small", "left")
    red_left_big = WorldObject("circle", "red", "large", "left")
    blue_right = WorldObject("square", "blue", "small", "right")
    grey = (0.5, 0.5, 0.5)
    one, one_big = Scene((red_left,), grey), Scene((red_left_big,), grey)
    two = Scene((red_left, blue_right), grey)
    assert scene_matches(one_big, one, frozenset({"shape", "colour", "position"}))
    assert not scene_matches(one_big, one, frozenset({"shape", "colour", "size", "position"}))
    assert not scene_matches(two, one, frozenset({"shape", "colour"}))


def test_generation_is_fast():
    import time

    world = World(seed=0)
    start = time.perf_counter()
    world.samples(0, 300)
    assert 300 / (time.perf_counter() - start) > 300  # thousands per second on an idle core; loose for shared CPUs


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="image_size"):
        World(image_size=20)
    with pytest.raises(ValueError, match="index"):
        World().sample(-1)
