"""The cache index tier in the simulator: FIFO reader replicas, the group-committing writer, the capacity plan."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError

from modm.config.schema import SystemMode
from modm.roles import ModelRole
from modm.sim import LatencyProfile, ParametricHitConfig, SimConfig, simulate, synthetic_workload
from modm.sim.cli import main
from modm.sim.index_plan import scaled_profile
from modm.sim.index_tier import (
    IndexTier,
    IndexTierConfig,
    replicas_needed,
    saturation_rate_per_s,
    steady_large_gpus,
)
from modm.workload.config import ArrivalConfig, ArrivalKind

PROFILE = LatencyProfile(
    gpu="test", full_generation_s={ModelRole.LARGE: 10.0, ModelRole.SMALL: 2.0}, load_s={}, source="unit test"
)


def test_lookups_take_the_reader_that_frees_first_in_arrival_order():
    tier = IndexTier(IndexTierConfig(readers=2, lookup_s=1.0))
    assert [tier.lookup(0.0) for _ in range(3)] == [1.0, 1.0, 2.0]  # the third waits for a reader
    assert tier.lookup(5.0) == 6.0  # an idle tier answers at once
    report = tier.report()
    assert report.lookups == 4
    assert report.lookup_wait_max_ms == pytest.approx(1000.0)
    assert report.lookup_wait_p50_ms == 0.0
    assert report.reader_utilisation == pytest.approx(4.0 / (2 * 6.0))


def test_admissions_that_wait_for_the_writer_share_one_commit():
    tier = IndexTier(IndexTierConfig(lookup_s=0.001, admission_s=0.1, commit_s=1.0))
    tier.admit(0.0)  # alone: commits 0 -> 1.1
    tier.admit(0.5)  # these two arrive while the writer is busy: one commit 1.1 -> 2.3
    tier.admit(0.6)
    tier.admit(3.0)  # the writer is idle again: 3.0 -> 4.1
    report = tier.report()
    assert report.admissions == 4
    assert report.commits == 3
    assert report.admission_lag_max_ms == pytest.approx(1800.0)  # the one at 0.5, committed at 2.3
    assert report.writer_utilisation == pytest.approx((1.1 + 1.2 + 1.1) / 4.1)


def test_replicas_needed_keeps_utilisation_under_the_bound_and_one_spare():
    assert replicas_needed(100.0, 0.002, 0.5) == 2  # 20% of one replica: the availability floor
    assert replicas_needed(1000.0, 0.002, 0.5) == 4  # 2 replicas' worth of work at 50% each
    assert replicas_needed(1000.0, 0.002, 0.5, min_replicas=1) == 4
    with pytest.raises(ValueError, match="max_utilisation"):
        replicas_needed(1.0, 0.002, 0.0)


def test_saturation_rate_and_the_steady_split_follow_the_gpu_work():
    # A miss costs 10 s of the large model, a hit at k=25 of T=50 half of the small model's 2 s.
    rate = saturation_rate_per_s(PROFILE, 16, 0.5, {25: 1.0}, 50)
    assert rate == pytest.approx(16 / (0.5 * 10.0 + 0.5 * 1.0))
    assert steady_large_gpus(PROFILE, 16, 0.5, {25: 1.0}, 50) == round(16 * 5.0 / 5.5)
    assert steady_large_gpus(PROFILE, 16, 0.0, {25: 1.0}, 50) == 15  # the small pool keeps one GPU
    with pytest.raises(ValueError, match="k_mix"):
        saturation_rate_per_s(PROFILE, 16, 0.5, {25: 0.0}, 50)


def test_scaled_profile_divides_generation_times_only():
    fast = scaled_profile(PROFILE, 10.0)
    assert fast.full_s(ModelRole.LARGE) == pytest.approx(1.0)
    assert fast.load_s == PROFILE.load_s
    assert "what-if" in fast.source
    with pytest.raises(ValueError, match="speedup"):
        scaled_profile(PROFILE, 0.0)


def _run(system: SystemMode, tier: IndexTierConfig | None, n: int = 300):
    config = SimConfig(
        system=system, n_gpus=4, profile=PROFILE, parametric=ParametricHitConfig(hit_rate=0.5), index_tier=tier
    )
    workload = synthetic_workload(n, ArrivalConfig(kind=ArrivalKind.POISSON, rate_per_min=30.0), seed=3, name="t")
    return simulate(config, workload)


def test_a_slow_index_tier_delays_every_modm_request_and_vanilla_has_none():
    free = _run(SystemMode.MODM, None)
    slow = _run(SystemMode.MODM, IndexTierConfig(readers=1, lookup_s=0.5, admission_s=0.01, commit_s=0.05))
    assert free.index_tier is None
    report = slow.index_tier
    assert report.lookups == 300
    assert report.admissions == 300  # cache-all admits every completion
    assert report.commits <= report.admissions
    # Every request waits at least its lookup before a GPU can take it.
    assert min(slow.start_s - slow.arrival_s) >= 0.5 - 1e-9
    assert min(free.start_s - free.arrival_s) < 0.5
    vanilla = _run(SystemMode.VANILLA, IndexTierConfig(lookup_s=0.5))
    assert vanilla.index_tier is None  # vanilla retrieves nothing


def test_index_tier_config_refuses_impossible_values():
    with pytest.raises(ValidationError):
        IndexTierConfig(readers=0, lookup_s=0.001)
    with pytest.raises(ValidationError):
        IndexTierConfig(lookup_s=0.0)


def test_index_plan_command_prints_and_writes_the_table(tmp_path, capsys):
    code = main(
        [
            "index-plan",
            "--profiles",
            "a40",
            "--gpus-list",
            "4,8",
            "--readers-list",
            "1,2",
            "--speedups",
            "1",
            "--requests",
            "200",
            "--index-lookup-ms",
            "2",
            "--index-admission-ms",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    assert "replicas needed" in capsys.readouterr().out
    payload = json.loads((tmp_path / "index_plan.json").read_text())
    rows = payload["rows"]
    assert [(r["gpus"], r["readers"]) for r in rows] == [(4, 1), (4, 2), (8, 1), (8, 2)]
    assert all(r["replicas_needed"] >= 2 and math.isfinite(r["reader_utilisation"]) for r in rows)
    # Twice the GPUs offer about twice the lookups.
    assert rows[2]["lookups_per_s"] == pytest.approx(2 * rows[0]["lookups_per_s"], rel=0.3)


def test_index_plan_without_a_lookup_time_is_a_clear_error(capsys):
    assert main(["index-plan", "--requests", "10"]) == 2
    assert "--index-lookup-ms" in capsys.readouterr().err
