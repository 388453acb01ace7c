"""A StepControl stops a running generation at its next denoising step (the hook a cancelled request uses)."""

import threading
import time

import pytest

from modm.config import ModelSpec
from modm.generation import DiffusionGenerator, GenerationRequest
from modm.generation.steps import GenerationInterrupted, StepControl


@pytest.fixture(scope="module")
def generators(tiny_zoo):
    spec = {"device": "cpu", "default_size": 64, "max_size": 128}
    return (
        DiffusionGenerator.from_spec(ModelSpec(source=str(tiny_zoo.large), **spec), "large"),
        DiffusionGenerator.from_spec(ModelSpec(source=str(tiny_zoo.small), **spec), "small"),
    )


def test_uninterrupted_runs_count_every_step(generators):
    large, small = generators
    control = StepControl()
    large.txt2img(GenerationRequest("a red boat", 64, 64, 3, 0), control)
    assert control.steps_run == 3
    image = large.txt2img(GenerationRequest("a red boat", 64, 64, 3, 0))
    control = StepControl()
    small.img2img(GenerationRequest("a red boat", 64, 64, 4, 0), image, 0.5, control)
    assert control.steps_run == 2  # int(4 * 0.5)


@pytest.mark.parametrize("role", [0, 1])
def test_a_stop_from_another_thread_ends_the_run_at_the_next_step(generators, role):
    generator, steps = generators[role], 400
    control = StepControl()
    threading.Timer(0.3, control.stop).start()
    started = time.perf_counter()
    with pytest.raises(GenerationInterrupted, match="stopped after denoising step"):
        if role == 0:
            generator.txt2img(GenerationRequest("a red boat", 64, 64, steps, 0), control)
        else:
            source = generators[0].txt2img(GenerationRequest("a red boat", 64, 64, 2, 0))
            started = time.perf_counter()
            generator.img2img(GenerationRequest("a red boat", 64, 64, steps, 0), source, 1.0, control)
    assert 1 <= control.steps_run < steps / 4
    assert time.perf_counter() - started < 10


def test_stopped_before_the_first_step_still_stops(generators):
    control = StepControl()
    control.stop()
    with pytest.raises(GenerationInterrupted, match="step 1"):
        generators[0].txt2img(GenerationRequest("a red boat", 64, 64, 50, 0), control)
    assert control.steps_run == 1
