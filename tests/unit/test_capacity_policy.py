"""A batching replica's capacity from its measured step costs (modm.policy.capacity), and the StepCosts that measure
them; no models, no Ray."""

import math
import threading

import pytest

from modm.generation.step_costs import StepCosts
from modm.policy.capacity import BatchCapacity


def test_costs_are_per_image_step_and_smoothed_per_batch_size():
    costs = StepCosts(max_batch_size=8)
    costs.observe(4, 2.0, 10)  # 4 images x 10 steps in 2 s: 0.05 s per image-step
    costs.observe(1, 0.2, 2)
    costs.observe(4, 4.0, 10)  # slower: the average moves a fifth of the way
    costs.observe(4, 1.0, 0)  # a call stopped before its first step: ignored
    view = costs.as_dict()
    assert view["passes"] == {4: 2, 1: 1}
    assert math.isclose(view["seconds_per_image_step"][4], 0.05 + 0.2 * (0.1 - 0.05))
    assert math.isclose(view["seconds_per_image_step"][1], 0.1)
    assert view["max_batch_size"] == 8 and 1 < view["mean_batch_size"] < 4


def test_listeners_hear_every_pass_and_threads_may_report():
    costs, heard = StepCosts(4), []
    costs.add_listener(heard.append)
    threads = [threading.Thread(target=costs.observe, args=(2, 0.1, 1)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert heard == [2] * 8 and costs.as_dict()["passes"] == {2: 8}


def test_capacity_interpolates_between_measured_batch_sizes_and_assumes_no_gain_beyond():
    capacity = BatchCapacity(8, {1: 0.10, 4: 0.04})
    assert capacity.image_step_s(1) == 0.10
    assert math.isclose(capacity.image_step_s(2), 0.08)
    assert capacity.image_step_s(8) == 0.04  # beyond the largest measured: its cost
    assert math.isclose(capacity.batch_latency_s(4, 50), 4 * 50 * 0.04)
    assert BatchCapacity(8).image_step_s(4) is None and not BatchCapacity(8).measured


def test_throughput_is_read_at_the_batch_size_the_replica_runs():
    measured = {1: 0.10, 4: 0.04}
    alone = BatchCapacity(8, measured, mean_batch_size=1.2)
    batched = BatchCapacity(8, measured, mean_batch_size=3.9)
    assert math.isclose(alone.generations_per_min(50), 60 / (50 * 0.10))
    assert math.isclose(batched.generations_per_min(50), 60 / (50 * 0.04))  # 2.5x more per replica
    assert BatchCapacity(8, measured).generations_per_min(50) == alone.generations_per_min(50)


def test_from_costs_reads_the_reported_dict_even_with_string_keys():
    costs = StepCosts(4)
    costs.observe(2, 1.0, 5)
    report = costs.as_dict()
    as_json = {**report, "seconds_per_image_step": {str(k): v for k, v in report["seconds_per_image_step"].items()}}
    for view in (report, as_json):
        capacity = BatchCapacity.from_costs(view)
        assert capacity.seconds_per_image_step == {2: 0.1} and capacity.typical_batch_size() == 2


def test_bad_capacities_are_refused():
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchCapacity(0)
    with pytest.raises(ValueError, match="step cost"):
        BatchCapacity(4, {2: -1.0})
    with pytest.raises(ValueError, match="max_batch_size"):
        StepCosts(0)
