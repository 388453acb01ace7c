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
