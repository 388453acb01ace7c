import math

import pytest

from modm.config import MonitorConfig, PolicyConfig
from modm.policy.tables import KRule
from modm.policy import (
    GlobalMonitor,
    KTable,
    PIDController,
    QualitySample,
    Throughput,
    WindowStats,
    fit_k_table,
    hit_cost,
    quality_target,
    refine_fraction,
    throughput_gain_bound,
    throughput_target,
    workloads,
)

MODM = KTable.from_config(PolicyConfig())


@pytest.mark.parametrize(
    "score, hit, k",
    [
        (None, False, 0),
        (0.0, False, 0),
        (0.2499, False, 0),
        (0.25, True, 5),
        (0.2699, True, 5),
        (0.27, True, 10),
        (0.2799, True, 10),
        (0.28, True, 15),
        (0.2899, True, 15),
        (0.29, True, 25),
        (0.2999, True, 25),
        (0.30, True, 30),
        (0.99, True, 30),
    ],
)
def test_modm_table_edges(score, hit, k):
    decision = MODM.decide(score)
    assert (decision.hit, decision.k) == (hit, k)
    assert decision.strength == pytest.approx(1 - k / 50)


def test_modm_table_never_emits_k20():
    assert 20 not in {MODM.decide(s / 1000).k for s in range(0, 1001)}


@pytest.mark.parametrize("score, k", [(0.95, 20), (0.9501, 25), (0.90, 15), (0.65, 0), (0.6501, 5)])
def test_nirvana_table_is_strict(score, k):
    assert KTable.nirvana().decide(score).k == k


def test_non_monotone_table_is_rejected():
    with pytest.raises(ValueError, match="strictly decrease"):
        KTable([KRule(min_score=0.3, k=5), KRule(min_score=0.2, k=10)], 50)
    with pytest.raises(ValueError, match="total_steps"):
        KTable([KRule(min_score=0.3, k=50)], 50)


def test_refine_fraction_and_workloads_match_eqs_6_to_9():
    mix = {30: 0.5, 10: 0.5}
    assert refine_fraction(mix, 50) == pytest.approx(0.5 * 0.4 + 0.5 * 0.8)
    w_miss, w_hit = workloads(WindowStats(request_rate=10, hit_rate=0.6, k_mix=mix))
    assert w_miss == pytest.approx(4.0)
    assert w_hit == pytest.approx(6.0 * 0.6)
    assert refine_fraction({}, 50) == 1.0


THR = Throughput.from_latencies(91.5, 16.5)  # MoDM's MI210 profile


def test_throughput_mode_eq_12():
    stats = WindowStats(request_rate=20, hit_rate=0.7, k_mix={30: 1.0})
    w_miss, w_hit = workloads(stats)
    expected = w_miss / (w_hit * THR.large_per_min / THR.small_per_min + w_miss) * 16
    assert throughput_target(stats, THR, 16) == pytest.approx(expected)
    # R cancels: the split depends on the mix only.
    assert throughput_target(WindowStats(200, 0.7, {30: 1.0}), THR, 16) == pytest.approx(expected)
    # More hits -> fewer large replicas.
    assert throughput_target(WindowStats(20, 0.9, {30: 1.0}), THR, 16) < expected


def test_quality_mode_maximises_large_within_constraints():
    stats = WindowStats(request_rate=6, hit_rate=0.7, k_mix={5: 1.0})
    n_large, feasible = quality_target(stats, THR, 16)
    w_miss, w_hit = workloads(stats)
    spare = lambda n: n * THR.large_per_min - w_miss + (16 - n) * THR.small_per_min  # noqa: E731
    assert feasible
    assert n_large * THR.large_per_min >= w_miss
    assert 0.9 * spare(n_large) >= w_hit
    assert n_large == 16 or 0.9 * spare(n_large + 1) < w_hit


def test_quality_mode_infeasible_is_reported():
    n_large, feasible = quality_target(WindowStats(1000, 0.5, {5: 1.0}), THR, 4)
    assert not feasible and n_large == 4


def test_pid_follows_modm_update_rule():
    pid = PIDController(0.6, 0.05, 0.05, dt=3, limit=16, current=16)
    assert pid.update(10) == pytest.approx(16 + 0.6 * -6 + 0.05 * -18 + 0.05 * -2)
    # It converges to a constant set-point.
    for _ in range(60):
        pid.update(10)
    assert pid.current == pytest.approx(10, abs=0.05)


def test_pid_output_is_clipped():
    pid = PIDController(10.0, 0.0, 0.0, dt=1, limit=4, current=0)
    assert pid.update(100) == 4


@pytest.mark.parametrize("mode", ["throughput", "quality"])
def test_monitor_moves_toward_small_when_hits_dominate(mode):
    monitor = GlobalMonitor(MonitorConfig(gpu_budget=8, mode=mode, min_small=1))
    hit_heavy = WindowStats(request_rate=30, hit_rate=0.95, k_mix={30: 1.0})
    miss_heavy = WindowStats(request_rate=3, hit_rate=0.05, k_mix={30: 1.0})
    for _ in range(10):
        after_hits = monitor.step(hit_heavy, THR)
    for _ in range(10):
        after_misses = monitor.step(miss_heavy, THR)
    assert after_hits.large < after_misses.large
    assert after_hits.large + after_hits.small == 8 and after_misses.small >= 1


def test_monitor_holds_on_an_idle_window():
    monitor = GlobalMonitor(MonitorConfig(gpu_budget=4), initial_large=2)
    assert monitor.step(WindowStats(0, 0, {}), THR).large == 2


def test_calibration_recovers_thresholds():
    # Quality of a refinement at k falls once the match is too far for that k: a synthetic ground truth.
    truth = {30: 0.8, 20: 0.6, 10: 0.4}
    samples = []
    for k, needed in truth.items():
        for i in range(200):
            score = i / 200
            quality = 30.0 if score >= needed else 20.0
            samples.append(QualitySample(score=score, k=k, quality=quality, full_quality=30.0))
    rules = fit_k_table(samples, alpha=0.95, min_samples=10)
    assert [r.k for r in rules] == [30, 20, 10]
    for rule in rules:
        assert rule.min_score <= truth[rule.k] + 1e-9
        # The fitted threshold keeps the mean quality above alpha * full: never far below the true edge.
        assert rule.min_score > truth[rule.k] - 0.15


def test_calibration_drops_a_k_whose_threshold_rounds_to_the_next_ones():
    """Two k with raw thresholds that differ below the stored 6 decimals: the smaller k is dominated, not a
    table with a repeated score (which PolicyConfig refuses)."""
    samples = [QualitySample(0.72006166, k, 1.0, 1.0) for k in (30, 10) for _ in range(5)]
    samples += [QualitySample(0.72006151, 10, 1.0, 1.0)] * 5 + [QualitySample(0.1, k, 0.0, 1.0) for k in (30, 10)] * 3
    assert [(r.min_score, r.k) for r in fit_k_table(samples, alpha=0.9, min_samples=5)] == [(0.720062, 30)]


def test_calibration_bad_input():
    with pytest.raises(ValueError, match="no calibration samples"):
        fit_k_table([])
    with pytest.raises(ValueError, match="non-finite"):
        fit_k_table([QualitySample(math.nan, 10, 1, 1)])
    with pytest.raises(ValueError, match="alpha"):
        fit_k_table([QualitySample(0.5, 10, 1, 1)], alpha=1.5)


def test_a_hit_costs_the_steps_it_keeps_at_the_small_models_price():
    assert hit_cost(30, 50, 4.0) == pytest.approx(0.1)  # 20 small steps of a quarter of a large step, of 50
    assert hit_cost(0, 50, 1.0) == 1.0
    # all requests hitting at a tenth of a miss gives 10x; none hitting gives 1x; half gives 1 / 0.55
    assert throughput_gain_bound(1.0, 0.1) == pytest.approx(10.0)
    assert throughput_gain_bound(0.0, 0.1) == 1.0
    assert throughput_gain_bound(0.5, 0.1) == pytest.approx(1 / 0.55)
    for bad in (lambda: hit_cost(50, 50, 4.0), lambda: hit_cost(10, 50, 0.0)):
        with pytest.raises(ValueError, match="must be"):
            bad()
    for bad in (lambda: throughput_gain_bound(1.2, 0.1), lambda: throughput_gain_bound(0.5, 0.0)):
        with pytest.raises(ValueError, match="must be"):
            bad()


def test_routing_rules():
    from modm.config import MonitorMode
    from modm.policy import PoolState, route
    from modm.roles import ModelRole

    busy_large, idle_large = PoolState(2, 2), PoolState(2, 1)
    small = PoolState(1, 5)
    for mode in MonitorMode:
        assert route(False, mode, idle_large, small) is ModelRole.LARGE
        assert route(True, mode, busy_large, small) is ModelRole.SMALL
        assert route(True, mode, idle_large, PoolState(0, 0)) is ModelRole.LARGE
    assert route(True, MonitorMode.QUALITY, idle_large, small) is ModelRole.LARGE
    assert route(True, MonitorMode.THROUGHPUT, idle_large, small) is ModelRole.SMALL


def test_monitor_state_stays_within_bounds():
    monitor = GlobalMonitor(MonitorConfig(gpu_budget=4, min_small=1))
    for _ in range(20):
        monitor.step(WindowStats(10, 0.0, {}), THR)  # all misses: the target is N
    assert monitor.pid.current == 3.0
    after = monitor.step(WindowStats(30, 1.0, {30: 1.0}), THR)  # all hits: the target is 0
    assert after.large < 3


def test_request_limit_checks_name_the_field():
    from modm.config import RequestLimits
    from modm.policy import InvalidRequestError, check_dimensions, check_request_limits

    limits = RequestLimits(max_prompt_chars=10, max_steps=8)
    check_request_limits("ok", None, "t", limits)
    check_dimensions(64, 32, size_multiple=16, max_size=64, model="large")
    for args, fragment in [
        (("x" * 11, None, "t"), "11 characters"),
        (("ok", 9, "t"), "steps=9"),
        (("", None, "t"), "prompt"),
        (("ok", None, " "), "tenant"),
    ]:
        with pytest.raises(InvalidRequestError, match=fragment):
            check_request_limits(*args, limits)
    with pytest.raises(InvalidRequestError, match="height=40"):
        check_dimensions(64, 40, size_multiple=16, max_size=64, model="large")
    with pytest.raises(InvalidRequestError, match="largest size 64"):
        check_dimensions(80, 64, size_multiple=16, max_size=64, model="large")
