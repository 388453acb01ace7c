"""benchmarks/tier_ramp.py's pure parts: the tiered world system, the switch prediction, the timeline."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from modm.config import config_from_dict
from modm.workload.records import Outcome, RequestRecord

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ramp():
    spec = importlib.util.spec_from_file_location("tier_ramp", REPO / "benchmarks" / "tier_ramp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tiered_world_system_is_valid_and_its_switch_point_follows_the_profiles(ramp, tmp_path):
    args = ramp.build_parser().parse_args(["--work", str(tmp_path)])
    latencies = ramp.profiled_latencies(args.world, args.steps, args.overhead_s)
    assert latencies["large"] > latencies["small"] > latencies["small2"] > args.overhead_s
    system = ramp.tiered_system(args, latencies)
    config = config_from_dict(system, "ramp")
    assert list(config.models.tiers()) == ["small", "small2"]
    assert {spec.batching.engine.value for spec in (config.models.large, *config.models.tiers().values())} == {"none"}
    prediction = ramp.predict(system, 0.5)
    up, down = prediction["switch_to_small2_above_req_per_min"], prediction["switch_back_below_req_per_min"]
    assert 0 < down < up < prediction["small2_carries_up_to_req_per_min"]
    # More hits: the small model carries more of the load, so the switch comes later.
    assert ramp.predict(system, 0.8)["switch_to_small2_above_req_per_min"] > up


def test_the_timeline_bins_requests_and_samples_on_one_clock(ramp):
    def record(i, arrival, hit, tier):
        return RequestRecord(
            index=i, prompt="p", source_row=i, arrival_s=arrival, outcome=Outcome.OK, hit=hit, tier=tier, latency_s=1.0
        )

    records = [record(0, 1.0, False, None), record(1, 5.0, True, "small"), record(2, 12.0, True, "small2")]
    running = {"large": 1, "small": 1, "small2": 0}
    samples = [
        {"t_s": 3.0, "tier": "small", "running": running},
        {"t_s": 13.0, "tier": "small2", "running": {**running, "small": 0, "small2": 1}},
    ]
    rows = ramp.timeline(records, samples, bin_s=10.0, t_offset_s=2.0)
    assert [row["tier"] for row in rows] == ["small", "small2"]
    assert rows[0]["hits_by_tier"] == {"small": 1} and rows[0]["hit_rate"] == 0.5
    assert rows[1]["running"] == {"large": 1, "small": 0, "small2": 1} and rows[1]["offered_per_min"] == 6.0
