"""`python -m modm.multistage.cli`: the boundaries command prints and writes JSON; bad input exits with code 2."""

from __future__ import annotations

import json

from modm.multistage.cli import main


def test_boundaries_command_prints_and_writes_json(tmp_path, capsys):
    out = tmp_path / "boundaries.json"
    code = main(
        [
            "boundaries",
            "--schedule",
            "ddpm",
            "flow",
            "--image-size",
            "8",
            "--limit",
            "200",
            "--num-samples",
            "300",
            "--steps",
            "20",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "optimal-denoiser" in printed and "FlowMatchEulerDiscreteScheduler" in printed
    rows = json.loads(out.read_text())["rows"]
    assert {(r["schedule"], r["method"]) for r in rows} == {
        (s, m) for s in ("ddpm", "flow") for m in ("optimal-denoiser", "uniform-t", "uniform-log-snr")
    }
    for row in rows:
        t1, t2 = row["t"]
        assert 0 < t1 < t2 < 1
        starts = row["stage_start_step"]
        assert starts["2"] == 0 and starts["2"] <= starts["1"] <= starts["0"] < 20


def test_bad_input_is_one_clear_error(capsys):
    assert main(["boundaries", "--limit", "0", "--schedule", "vp"]) == 2
    assert "limit must be positive" in capsys.readouterr().err
