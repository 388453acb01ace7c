"""The simulator runs the tier policy: small tiers in the profile, hits served by the chosen tier, the switch
predicted from the policy, GPU-seconds per image, and the `modm sim tiers` command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modm.config.schema import MonitorConfig, MonitorMode, SystemMode
from modm.roles import ModelRole
from modm.sim import BUILTIN_PROFILES, LatencyProfile, ParametricHitConfig, SimConfig, simulate
from modm.sim.cli import main
from modm.sim.profiles import TierLatency
from modm.sim.tier_ramp import predict_tier_switch

from sim_workloads import poisson_workload

TIERED = BUILTIN_PROFILES["mi210-sana"]


def _config(profile=TIERED, **monitor) -> SimConfig:
    return SimConfig(
        system=SystemMode.MODM,
        n_gpus=16,
        profile=profile,
        monitor=MonitorConfig(mode=MonitorMode.QUALITY, **monitor),  # MoDM's 180 s window
        parametric=ParametricHitConfig(),
    )


def test_the_sana_tier_is_sdxl_scaled_by_sanas_published_ratio():
    assert TIERED.tier_names() == ["small", "small2"]
    assert TIERED.small_tiers["small2"].full_generation_s == pytest.approx(16.5 * 1.2 / 6.5)
    assert TIERED.tier_service_s("small2", 25, 50) == pytest.approx(16.5 * 1.2 / 6.5 / 2)
    assert TIERED.tier_service_s("small", 25, 50) == TIERED.service_s(ModelRole.SMALL, 25, 50)
    with pytest.raises(ValueError, match="no small tier"):
        TIERED.tier_service_s("small3", 0, 50)
    with pytest.raises(ValueError, match="'small' is the first tier"):
        LatencyProfile(
            gpu="x",
            full_generation_s={"large": 10, "small": 2},
            small_tiers={"small": TierLatency(full_generation_s=1)},
        )


def test_prediction_comes_from_the_policys_budget_share():
    prediction = predict_tier_switch(_config())
    # H = 0.7, F_refine = 0.725: share(R) = R (0.3 / P_large + 0.5075 / P_t) / 16.
    per_rate = (0.3 * 91.5 / 60 + 0.7 * 0.725 * 16.5 / 60) / 16
    assert prediction["switch_to_cheaper_above_req_per_min"] == pytest.approx(0.9 / per_rate)
    assert prediction["switch_back_below_req_per_min"] == pytest.approx(0.75 / per_rate)
    assert prediction["vanilla_saturation_req_per_min"] == pytest.approx(16 * 60 / 91.5)


def test_steady_overload_moves_hits_to_the_cheaper_tier_and_calm_keeps_the_best():
    calm = simulate(_config(), poisson_workload(400, 12.0, seed=3))
    assert {d.tier for d in calm.monitor_decisions} == {"small"}
    assert not np.any(calm.served_by == 2)
    busy = simulate(_config(), poisson_workload(1500, 28.0, seed=3))
    tiers = [d.tier for d in busy.monitor_decisions]
    assert tiers[-1] == "small2" and tiers.count("small2") >= len(tiers) - 1  # no flapping back to SDXL
    switched_at = next(d.t_s for d in busy.monitor_decisions if d.tier == "small2")
    late = busy.start_s > switched_at + 16.5 + 15.0  # after an SDXL refine in progress and the reload
    assert np.all(busy.served_by[late & (busy.served_by > 0)] == 2)  # hits refined by SANA only
    assert any(s.to_model == "small2" for s in busy.switches)
    assert busy.served_per_model()["small2"] > 0
    assert sum(busy.served_per_model().values()) == 1500
    # A single-tier profile never leaves SDXL.
    single = simulate(_config(BUILTIN_PROFILES["mi210"]), poisson_workload(600, 28.0, seed=3))
    assert {d.tier for d in single.monitor_decisions} == {"small"}


def test_gpu_seconds_per_image_busy_and_provisioned():
    result = simulate(_config(), poisson_workload(300, 10.0, seed=5))
    cost = result.gpu_seconds_per_image()
    served = result.completions > 0
    assert cost["images"] == 300
    assert cost["busy_gpu_s"] == pytest.approx(float(np.sum(result.end_s[served] - result.start_s[served])))
    span = np.nanmax(result.end_s) - np.nanmin(result.arrival_s)
    assert cost["provisioned_per_image"] == pytest.approx(16 * span / 300)
    assert 0 < cost["busy_per_image"] < cost["provisioned_per_image"]
    vanilla = simulate(_config().model_copy(update={"system": SystemMode.VANILLA}), poisson_workload(300, 5.0))
    assert vanilla.gpu_seconds_per_image()["busy_per_image"] == pytest.approx(91.5)  # every image a full SD3.5L


def test_tiers_command_prints_the_prediction_first_and_writes_json(tmp_path, capsys):
    out = tmp_path / "tiers.json"
    assert main(["tiers", "--requests", "600", "--max-rate", "30", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.index("prediction") < text.index("modm-tiers")
    data = json.loads(out.read_text())
    assert set(data["systems"]) == {"vanilla", "modm-sdxl", "modm-tiers"}
    assert data["first_switch"]["tier"] == "small2"
    tiers = data["systems"]["modm-tiers"]
    assert tiers["served_per_model"]["small2"] > 0
    vanilla = data["systems"]["vanilla"]["gpu_seconds_per_image"]["busy_per_image"]
    assert tiers["gpu_seconds_per_image"]["busy_per_image"] < vanilla
    assert main(["tiers", "--profile", "mi210", "--requests", "50"]) == 2
    assert "needs small_tiers" in capsys.readouterr().err
