"""The overload tier policy (modm.policy.tiers): budget shares, the choice, hysteresis, and the tiered monitor."""

from __future__ import annotations

import pytest

from modm.config.schema import ModelsConfig, MonitorConfig, MonitorMode, SystemConfig
from modm.policy.monitor import WindowStats
from modm.policy.tiers import TierPolicy, TieredMonitor, budget_share
from modm.roles import small_tier_name

# MI210 (MoDM's multinode code: SD3.5-Large 91.5 s, SDXL 16.5 s) and SANA-1.6B at SDXL x 1.2/6.5 (SANA's table).
P_LARGE, P_SDXL, P_SANA = 60 / 91.5, 60 / 16.5, 60 / (16.5 * 1.2 / 6.5)
TIERS = {"small": P_SDXL, "small2": P_SANA}
TIER2 = {"source": "S2", "profiled_latency_s": 1.0}
K_MIX = {5: 0.30, 10: 0.25, 15: 0.20, 25: 0.15, 30: 0.10}  # F_refine = 0.725


def window(rate: float, hit_rate: float = 0.7) -> WindowStats:
    return WindowStats(request_rate=rate, hit_rate=hit_rate, k_mix=K_MIX, total_steps=50)


def test_budget_share_is_misses_on_large_plus_hits_on_the_tier():
    # W_miss = 0.3 R, W_hit = 0.7 * 0.725 R; replicas busy = W_miss / P_large + W_hit / P_small.
    share = budget_share(window(20.0), P_LARGE, P_SDXL, 16)
    assert share == pytest.approx((6.0 / P_LARGE + 20 * 0.7 * 0.725 / P_SDXL) / 16)
    assert budget_share(window(20.0), P_LARGE, P_SANA, 16) < share
    with pytest.raises(ValueError, match="bad capacity"):
        budget_share(window(20.0), P_LARGE, 0.0, 16)


def test_best_tier_that_fits_is_chosen_and_overload_moves_at_once():
    policy = TierPolicy(["small", "small2"], headroom=0.9, hysteresis=0.1, upgrade_windows=1)
    low = policy.choose(window(10.0), P_LARGE, TIERS, 16)
    assert (low.tier, low.fits, low.switched) == ("small", True, False)
    # SDXL carries up to 0.9 * 16 / (0.3 / P_large + 0.5075 / P_sdxl) = 24.1 req/min; SANA up to 29.8.
    high = policy.choose(window(25.0), P_LARGE, TIERS, 16)
    assert (high.tier, high.fits, high.switched) == ("small2", True, True)
    assert high.shares["small"] > 0.9 >= high.shares["small2"]
    # Beyond every tier: the cheapest, marked as not fitting.
    over = policy.choose(window(40.0), P_LARGE, TIERS, 16)
    assert (over.tier, over.fits, over.switched) == ("small2", False, False)


def test_hysteresis_holds_the_cheaper_tier_inside_the_band():
    policy = TierPolicy(["small", "small2"], headroom=0.9, hysteresis=0.1, upgrade_windows=2)
    assert policy.choose(window(25.0), P_LARGE, TIERS, 16).tier == "small2"
    # 23 req/min: SDXL would fit (share 0.86 <= 0.9) but not with the margin (<= 0.8): stay on SANA.
    assert 0.8 < budget_share(window(23.0), P_LARGE, P_SDXL, 16) <= 0.9
    for _ in range(5):
        assert policy.choose(window(23.0), P_LARGE, TIERS, 16).tier == "small2"
    # 18 req/min (share 0.75): back to SDXL on the second such window in a row, not the first.
    first = policy.choose(window(18.0), P_LARGE, TIERS, 16)
    assert (first.tier, first.switched) == ("small2", False)
    second = policy.choose(window(18.0), P_LARGE, TIERS, 16)
    assert (second.tier, second.switched) == ("small", True)


def test_an_interrupted_streak_starts_over_and_an_idle_window_holds():
    policy = TierPolicy(["small", "small2"], upgrade_windows=2, current=1)
    assert policy.choose(window(18.0), P_LARGE, TIERS, 16).tier == "small2"
    assert policy.choose(window(23.0), P_LARGE, TIERS, 16).tier == "small2"  # in the band: the streak resets
    assert policy.choose(window(18.0), P_LARGE, TIERS, 16).tier == "small2"
    idle = policy.choose(window(0.0), P_LARGE, TIERS, 16)
    assert (idle.tier, idle.switched) == ("small2", False)


def test_a_ramp_switches_once_each_way():
    policy = TierPolicy(["small", "small2"])
    rates = [4, 8, 12, 16, 20, 22, 24, 25, 26, 25, 24, 23, 22, 20, 18, 16, 12]
    tiers = [policy.choose(window(r), P_LARGE, TIERS, 16).tier for r in rates]
    changes = [i for i in range(1, len(tiers)) if tiers[i] != tiers[i - 1]]
    assert len(changes) == 2, tiers
    assert tiers[changes[0]] == "small2" and rates[changes[0]] == 25
    assert tiers[changes[1]] == "small" and rates[changes[1]] <= 20


def test_bad_policy_inputs_are_refused():
    with pytest.raises(ValueError, match="distinct"):
        TierPolicy(["small", "small"])
    with pytest.raises(ValueError, match="hysteresis"):
        TierPolicy(["small"], headroom=0.5, hysteresis=0.5)
    with pytest.raises(ValueError, match="no throughput"):
        TierPolicy(["small", "small2"]).choose(window(5.0), P_LARGE, {"small": P_SDXL}, 16)


@pytest.mark.parametrize("mode", [MonitorMode.QUALITY, MonitorMode.THROUGHPUT])
def test_tiered_monitor_splits_with_the_chosen_tiers_throughput(mode):
    config = MonitorConfig(mode=mode, gpu_budget=16, min_small=1, kp=1.0, ki=0.0, kd=0.0)
    monitor = TieredMonitor(config, ["small", "small2"])
    calm = monitor.step(window(10.0), P_LARGE, TIERS)
    assert calm.decision.tier == "small"
    assert calm.replicas() == {"small": calm.allocation.small, "small2": 0}
    busy = monitor.step(window(25.0), P_LARGE, TIERS)
    assert busy.decision.tier == "small2" and busy.replicas()["small"] == 0
    assert busy.allocation.large + busy.allocation.small == 16
    # The cheaper tier frees replicas for the large model: misses (7.5/min) need 11.4 large replicas.
    assert busy.allocation.large >= 12


def test_tier_names_and_the_models_config():
    assert [small_tier_name(i) for i in range(3)] == ["small", "small2", "small3"]
    models = ModelsConfig(
        large={"source": "L"}, small={"source": "S1"}, small_tiers=[{"source": "S2", "profiled_latency_s": 1.0}]
    )
    assert {name: spec.source for name, spec in models.tiers().items()} == {"small": "S1", "small2": "S2"}
    with pytest.raises(ValueError, match="models.small first"):
        SystemConfig(mode="modm", models={"large": {"source": "L"}, "small_tiers": [TIER2]})
    vanilla = SystemConfig(
        mode="vanilla",
        models={"large": {"source": "L"}, "small": {"source": "S", "profiled_latency_s": 2.0}, "small_tiers": [TIER2]},
    )
    assert list(vanilla.models.tiers()) == ["small", "small2"]  # kept, unused, like models.small
    with pytest.raises(ValueError, match=r"models.small.profiled_latency_s"):
        SystemConfig(mode="modm", models={"large": {"source": "L"}, "small": {"source": "S"}, "small_tiers": [TIER2]})
