"""GenEval-style scoring of a judge reading against the scene a prompt described (no model needed)."""

from __future__ import annotations

import pytest

from modm.world.captions import ALL, NO_POSITION
from modm.world.judge import JudgeReading, accuracy, score_image, slot_targets
from modm.world.scene import Scene, WorldObject

GREY = (0.5, 0.5, 0.5)
RED_LEFT = WorldObject("circle", "red", "small", "left")
BLUE_RIGHT = WorldObject("square", "blue", "large", "right")
TWO = Scene((RED_LEFT, BLUE_RIGHT), GREY)


def test_a_faithful_reading_scores_every_attribute():
    reading = JudgeReading({"left": ("circle", "red", "small"), "right": ("square", "blue", "large")})
    assert all(score_image(reading, TWO).values())


def test_an_object_in_the_wrong_place_fails_position_only():
    reading = JudgeReading({"centre": ("circle", "red", "small"), "right": ("square", "blue", "large")})
    score = score_image(reading, TWO)
    assert not score["position"] and not score["all"]
    assert score["shape"] and score["colour"] and score["size"] and score["count"] and score["shape_colour"]
    assert score_image(reading, TWO, NO_POSITION)["all"]  # the prompt did not ask where


def test_a_missing_object_fails_count_and_its_attributes():
    reading = JudgeReading({"left": ("circle", "red", "small")})
    score = score_image(reading, TWO)
    assert not score["count"] and not score["shape"] and not score["all"]


def test_a_wrong_colour_fails_colour_and_shape_colour():
    reading = JudgeReading({"left": ("circle", "green", "small"), "right": ("square", "blue", "large")})
    score = score_image(reading, TWO, ALL)
    assert score["shape"] and not score["colour"] and not score["shape_colour"]


def test_accuracy_averages_per_attribute_and_refuses_nothing():
    good = score_image(JudgeReading({"left": ("circle", "red", "small"), "right": ("square", "blue", "large")}), TWO)
    bad = score_image(JudgeReading({}), TWO)
    acc = accuracy([good, bad])
    assert acc["all"] == 0.5 and acc["shape"] == 0.5
    with pytest.raises(ValueError, match="no images"):
        accuracy([])


def test_slot_targets_mark_empty_slots():
    t = slot_targets([TWO])
    assert t["shape"][0].tolist() == [1, 2, 0, 0, 0]  # circle left, square right, nothing elsewhere
    assert t["colour"][0, 2] == -100 and t["size"][0, 1] == 1
