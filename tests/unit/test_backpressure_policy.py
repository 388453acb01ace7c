"""Admission control from an SLO estimate (modm.policy.backpressure): examples and properties, no Ray."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modm.policy.backpressure import PoolLoad, admit, seconds_to_drain


@pytest.mark.parametrize(
    "in_flight, replicas, latency, bound, admitted, expected, retry_after",
    [
        (0, 1, 0.5, 2.0, True, 0.5, 0),  # idle pool
        (3, 1, 0.5, 2.0, True, 2.0, 0),  # exactly at the bound: 3 ahead + this one = 4 x 0.5 s
        (4, 1, 0.5, 2.0, False, 2.5, 1),  # one too many; one request (0.5 s) must drain -> 1 s
        (9, 1, 0.5, 2.0, False, 5.0, 3),  # 6 must drain: 3 s
        (7, 2, 0.5, 2.0, True, 2.0, 0),  # two replicas serve 8 within 2 s
        (8, 2, 0.5, 2.0, False, 2.5, 1),
        (0, 1, 30.0, 10.0, True, 30.0, 0),  # a bound shorter than one request still lets an idle pool work
        (1, 1, 30.0, 10.0, False, 60.0, 30),
    ],
)
def test_examples(in_flight, replicas, latency, bound, admitted, expected, retry_after):
    verdict = admit(PoolLoad(in_flight=in_flight, replicas=replicas, latency_s=latency), bound)
    assert (verdict.admitted, verdict.expected_latency_s, verdict.retry_after_s) == (admitted, expected, retry_after)


loads = st.builds(
    PoolLoad,
    in_flight=st.integers(0, 10_000),
    replicas=st.integers(1, 64),
    latency_s=st.floats(0.01, 600, allow_nan=False),
)
bounds = st.floats(0.01, 3600, allow_nan=False)


@given(loads, bounds)
def test_admits_exactly_the_requests_expected_within_the_bound(load, bound):
    verdict = admit(load, bound)
    if load.latency_s <= bound:
        tolerance = 1e-9 * bound
        if verdict.admitted:
            assert verdict.expected_latency_s <= bound + tolerance
        else:
            assert verdict.expected_latency_s > bound - tolerance
    else:  # a single request exceeds the bound: only a free replica takes one
        assert verdict.admitted == (load.in_flight < load.replicas)
    assert (verdict.retry_after_s == 0) == verdict.admitted


@given(loads, bounds)
def test_after_retry_after_seconds_of_draining_the_request_fits(load, bound):
    verdict = admit(load, bound)
    if verdict.admitted:
        return
    assert verdict.retry_after_s >= 1 and isinstance(verdict.retry_after_s, int)
    # In t seconds the pool answers floor(t / latency) rounds of `replicas` requests.
    drained = math.floor(verdict.retry_after_s / load.latency_s + 1e-9) * load.replicas
    later = PoolLoad(in_flight=max(0, load.in_flight - drained), replicas=load.replicas, latency_s=load.latency_s)
    assert admit(later, bound).admitted


@given(loads, bounds, st.integers(1, 100), st.integers(1, 8))
def test_more_load_never_helps_and_more_replicas_never_hurt(load, bound, extra_requests, extra_replicas):
    heavier = PoolLoad(load.in_flight + extra_requests, load.replicas, load.latency_s)
    wider = PoolLoad(load.in_flight, load.replicas + extra_replicas, load.latency_s)
    assert admit(heavier, bound).admitted <= admit(load, bound).admitted
    assert admit(wider, bound).admitted >= admit(load, bound).admitted


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"in_flight": -1}, "in_flight"),
        ({"in_flight": 1.5}, "in_flight"),
        ({"replicas": 0}, "replicas"),
        ({"latency_s": 0.0}, "latency_s"),
        ({"latency_s": float("nan")}, "latency_s"),
        ({"latency_s": float("inf")}, "latency_s"),
    ],
)
def test_bad_loads_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        PoolLoad(**{"in_flight": 0, "replicas": 1, "latency_s": 1.0, **fields})


@pytest.mark.parametrize("bound", [0, -1, float("nan"), float("inf"), "2"])
def test_bad_bounds_are_refused(bound):
    with pytest.raises(ValueError, match="bound_s"):
        admit(PoolLoad(0, 1, 1.0), bound)


def test_seconds_to_drain():
    assert seconds_to_drain(PoolLoad(5, 2, 0.4), 1) == 1
    assert seconds_to_drain(PoolLoad(5, 2, 0.4), 5) == 2  # 3 rounds x 0.4 s = 1.2 s -> 2
    with pytest.raises(ValueError, match="requests"):
        seconds_to_drain(PoolLoad(5, 2, 0.4), 0)


# ------------------------------------------------------------------------------------------------ batching replicas
@pytest.mark.parametrize(
    "in_flight, expected",
    [
        (0, 1.0),  # alone in its batch
        (3, 2.5),  # the fourth of a batch of four: a full batch
        (4, 2.5 + 1.0),  # one full batch ahead, then alone
        (9, 2 * 2.5 + 1.5),  # two full batches ahead, then a batch of two (1 + 1.5 * 1/3)
    ],
)
def test_a_batching_replica_serves_the_requests_ahead_in_full_batches(in_flight, expected):
    load = PoolLoad(in_flight=in_flight, replicas=1, latency_s=1.0, max_batch=4, full_batch_latency_s=2.5)
    assert math.isclose(load.expected_latency_s(), expected)


def test_batching_capacity_and_drain_time_count_full_batches():
    load = PoolLoad(in_flight=0, replicas=2, latency_s=1.0, max_batch=4, full_batch_latency_s=2.5)
    assert load.capacity(5.0) == 2 * 4 * 2  # two rounds of a full batch on each of two replicas
    assert load.capacity(1.0) == 4 * 2  # a bound shorter than a batch still lets one round in
    assert seconds_to_drain(load, 9) == math.ceil(2 * 2.5)  # 9 requests: two rounds of 8
    assert admit(PoolLoad(in_flight=15, replicas=2, latency_s=1.0, max_batch=4, full_batch_latency_s=2.5), 5.0).admitted
    assert not admit(
        PoolLoad(in_flight=16, replicas=2, latency_s=1.0, max_batch=4, full_batch_latency_s=2.5), 5.0
    ).admitted


def test_an_unmeasured_batch_assumes_no_gain():
    load = PoolLoad(in_flight=7, replicas=1, latency_s=1.0, max_batch=4)
    assert load.batch_latency_s(4) == 4.0 and load.expected_latency_s() == 8.0
    assert PoolLoad(in_flight=7, replicas=1, latency_s=1.0).expected_latency_s() == 8.0  # same as one at a time


@given(loads, st.integers(min_value=1, max_value=16), st.floats(min_value=0.1, max_value=4.0))
def test_batching_never_makes_the_estimate_worse_than_one_at_a_time(load, max_batch, gain):
    """With a full batch no slower than max_batch requests one at a time, waiting is never longer."""
    full = load.latency_s * max(1.0, max_batch / max(gain, 1.0))
    batched = PoolLoad(load.in_flight, load.replicas, load.latency_s, max_batch=max_batch, full_batch_latency_s=full)
    assert batched.expected_latency_s() <= load.expected_latency_s() + 1e-9


def test_bad_batch_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch"):
        PoolLoad(in_flight=0, replicas=1, latency_s=1.0, max_batch=0)
    with pytest.raises(ValueError, match="full_batch_latency_s"):
        PoolLoad(in_flight=0, replicas=1, latency_s=1.0, max_batch=2, full_batch_latency_s=float("nan"))
