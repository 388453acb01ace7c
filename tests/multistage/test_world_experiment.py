"""`modm multistage world-efficiency --quick` on the committed world: JSON shape, equal FLOPs, EMA; bad input."""

from __future__ import annotations

import json
import shutil

import pytest

from modm.multistage.cli import main
from modm.multistage.world_experiment import flops_to_reach_metric, quick_world_config
from modm.world.cli import COMMITTED_WORLD


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("world_efficiency") / "result.json"
    assert main(["world-efficiency", "--world", str(COMMITTED_WORLD), "--quick", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_quick_run_writes_both_models_curves(quick_run, capsys):
    config = quick_world_config()
    assert quick_run["boundaries"]["method"] in ("optimal-denoiser", "uniform-log-snr")
    assert len(quick_run["boundaries"]["timesteps"]) == 2
    for name, stages in (("unified", 1), ("multistage", 3)):
        run = quick_run[name]
        assert len(run["step_flops_per_stage"]) == stages
        assert run["ema_on"] and run["ema_decay"] == config.train.ema_decay
        assert len(run["curve"]) == config.num_evals
        for point in run["curve"]:
            assert set(point["judge"]) >= {"shape_colour", "all", "colour"}
            assert len(point["stage_losses"]) == 3  # both on the multi-stage model's stage ranges
            assert point["clip_score"] is not None
            assert point["fid"] is None and "FID needs more than" in point["fid_note"]  # 6 images, 64-d features
        assert [p["steps"] for p in run["curve"]] == sorted(p["steps"] for p in run["curve"])
    assert set(quick_run["same_quality"]) >= {"fid", "clip_score", "judge_shape_colour", "judge_all"}


def test_both_models_train_to_the_budget_within_one_step(quick_run):
    budget = quick_world_config().budget_tflops * 1e12
    for name in ("unified", "multistage"):
        run = quick_run[name]
        spent = run["curve"][-1]["train_flops"]
        assert budget <= spent < budget + max(run["step_flops_per_stage"]), name
        assert spent == sum(n * f for n, f in zip(run["curve"][-1]["steps_per_stage"], run["step_flops_per_stage"]))


def test_a_world_without_a_component_is_one_clear_error(tmp_path, capsys):
    world = tmp_path / "world"
    world.mkdir()
    manifest = json.loads((COMMITTED_WORLD / "world.json").read_text())
    del manifest["components"]["judge"]
    (world / "world.json").write_text(json.dumps(manifest))
    for name in ("clip", "vae", "clip_score"):
        shutil.copytree(COMMITTED_WORLD / name, world / name)
    assert main(["world-efficiency", "--world", str(world), "--quick"]) == 2
    err = capsys.readouterr().err
    assert "missing component(s) ['judge']" in err


def test_flops_to_reach_metric():
    curve = [
        {"train_flops": 1, "fid": 9.0, "acc": 0.1},
        {"train_flops": 2, "fid": 4.0, "acc": None},
        {"train_flops": 3, "fid": 5.0, "acc": 0.5},
    ]
    assert flops_to_reach_metric(curve, "fid", 4.5, higher_is_better=False) == 2
    assert flops_to_reach_metric(curve, "acc", 0.4, higher_is_better=True) == 3
    assert flops_to_reach_metric(curve, "acc", 0.9, higher_is_better=True) is None
