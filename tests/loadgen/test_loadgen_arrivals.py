"""Arrival processes: statistics, determinism by seed, MoDM's ramp, the replay speed factor."""

from __future__ import annotations

import numpy as np
import pytest
from trace_samples import DIFFUSIONDB_SAMPLE
from pydantic import ValidationError

from loadgen.config import ClientConfig, RunConfig
from modm.workload.arrivals import arrival_offsets, worker_seed
from modm.workload.config import ArrivalConfig, ArrivalKind, SessionConfig, TraceConfig
from modm.workload.prepare import prepare_workload
from modm.workload.trace import TraceRequest
from modm.workload.arrivals import (
    fluctuating_offsets,
    poisson_offsets,
    replay_offsets,
    shard,
    sigmoid_ramp_offsets,
    worker_rng,
)


def test_poisson_mean_rate_and_exponential_gaps():
    rate_per_min = 30.0
    offsets = poisson_offsets(20_000, rate_per_min, np.random.default_rng(0))
    gaps = np.diff(np.concatenate([[0.0], offsets]))
    assert gaps.mean() == pytest.approx(60.0 / rate_per_min, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential: CV = 1
    assert np.all(gaps > 0)
    per_minute = np.histogram(offsets, bins=np.arange(0, offsets[-1] // 60 * 60, 60))[0]
    assert per_minute.var() / per_minute.mean() == pytest.approx(1.0, abs=0.15)  # Poisson counts: var = mean


def test_seeding_is_reproducible_and_per_worker():
    assert worker_seed(42, 4, 3) == 42 * 4 + 3
    a = poisson_offsets(50, 10.0, worker_rng(7, 2, 0))
    assert np.array_equal(a, poisson_offsets(50, 10.0, worker_rng(7, 2, 0)))
    assert not np.array_equal(a, poisson_offsets(50, 10.0, worker_rng(7, 2, 1)))
    with pytest.raises(ValueError, match="worker_id=2"):
        worker_seed(1, 2, 2)
    trace = [TraceRequest(prompt=str(i), source_row=i) for i in range(7)]
    assert [r.prompt for r in shard(trace, 3, 1)] == ["1", "4"]


def test_sigmoid_ramp_matches_modm_formula_and_is_monotone():
    n, low, high = 200, 1.0, 30.0
    offsets = sigmoid_ramp_offsets(n, low, high)
    x = np.linspace(-2, 6, n)
    expected_rate = low + (high - low) / (1 + np.exp(-1.5 * x))
    np.testing.assert_allclose(offsets, np.cumsum(60.0 / expected_rate))
    gaps = np.diff(offsets)
    assert np.all(gaps > 0)  # offsets increase ...
    assert np.all(np.diff(gaps) < 0)  # ... with shrinking gaps: the rate rises monotonically
    assert 60.0 / gaps[-1] == pytest.approx(high, rel=0.01)  # ends at (almost) the max rate
    with pytest.raises(ValueError, match="below its min rate"):
        sigmoid_ramp_offsets(10, 5.0, 2.0)


def test_replay_speed_factor_and_validation():
    t = [1000.0, 1010.0, 1040.0, 1100.0]
    np.testing.assert_allclose(replay_offsets(t), [0, 10, 40, 100])
    np.testing.assert_allclose(replay_offsets(t, speed=4.0), [0, 2.5, 10, 25])
    with pytest.raises(ValueError, match="request 1 has none"):
        replay_offsets([1.0, None])
    with pytest.raises(ValueError, match="sorted"):
        replay_offsets([2.0, 1.0])
    with pytest.raises(ValueError, match="positive"):
        replay_offsets(t, speed=0)


def test_fluctuating_rate_follows_the_sine_and_keeps_its_mean():
    mean, amplitude, period = 60.0, 0.8, 600.0
    offsets = fluctuating_offsets(6000, mean, amplitude, period, np.random.default_rng(1))
    assert np.all(np.diff(offsets) > 0)
    whole = offsets < (offsets[-1] // period) * period
    assert whole.sum() / (offsets[whole][-1] / 60.0) == pytest.approx(mean, rel=0.05)
    phase = (offsets % period) / period
    rising = np.sum(phase < 0.5)  # sin > 0: rate above the mean
    falling = np.sum(phase >= 0.5)
    expected_ratio = (1 + 2 * amplitude / np.pi) / (1 - 2 * amplitude / np.pi)  # integral of 1 + a sin
    assert rising / falling == pytest.approx(expected_ratio, rel=0.1)
    with pytest.raises(ValueError, match="amplitude"):
        fluctuating_offsets(10, mean, 1.0, period, np.random.default_rng(0))


def test_arrival_offsets_dispatch_and_config_rules():
    trace = [TraceRequest(prompt="p", source_row=i, timestamp_s=100.0 + 3 * i) for i in range(5)]
    rng = np.random.default_rng(0)
    assert arrival_offsets(ArrivalConfig(kind=ArrivalKind.CLOSED_LOOP, concurrency=4), trace, rng) is None
    np.testing.assert_allclose(
        arrival_offsets(ArrivalConfig(kind=ArrivalKind.REPLAY, speed=3.0), trace, rng), [0, 1, 2, 3, 4]
    )
    ramp = arrival_offsets(ArrivalConfig(kind=ArrivalKind.RAMP, max_rate_per_min=10.0), trace, rng)
    np.testing.assert_allclose(ramp, sigmoid_ramp_offsets(5, 1.0, 10.0))
    # Two workers at half the rate each superpose to the full rate.
    many = [TraceRequest(prompt="p", source_row=i) for i in range(4000)]
    half = arrival_offsets(ArrivalConfig(rate_per_min=20.0), many, np.random.default_rng(3), n_workers=2)
    assert len(many) / (half[-1] / 60.0) == pytest.approx(10.0, rel=0.05)
    with pytest.raises(ValidationError, match="needs rate_per_min"):
        ArrivalConfig(kind=ArrivalKind.POISSON)
    with pytest.raises(ValidationError, match="needs max_rate_per_min"):
        ArrivalConfig(kind=ArrivalKind.RAMP)
    with pytest.raises(ValidationError, match="below min_rate_per_min"):
        ArrivalConfig(kind=ArrivalKind.RAMP, min_rate_per_min=5, max_rate_per_min=1)


def test_workers_split_one_session_workload_with_their_own_seeds():
    def config(worker_id: int) -> RunConfig:
        return RunConfig(
            trace=TraceConfig(path=str(DIFFUSIONDB_SAMPLE), n_requests=90),
            sessions=SessionConfig(),
            arrival=ArrivalConfig(rate_per_min=30.0),
            client=ClientConfig(url="http://127.0.0.1:1"),
            seed=11,
            n_workers=3,
            worker_id=worker_id,
        )

    whole, _ = prepare_workload(config(0).model_copy(update={"n_workers": 1}))
    parts = [prepare_workload(config(w)) for w in range(3)]
    assert [r for w in range(3) for r in parts[w][0]] == [r for w in range(3) for r in whole[w::3]]
    assert prepare_workload(config(1))[1].tolist() == parts[1][1].tolist()  # reproducible per worker
    assert parts[0][1].tolist() != parts[1][1].tolist()
    with pytest.raises(ValidationError, match="worker_id=3 must be below n_workers=3"):
        config(3)
