"""The `modm sim` command line and the pieces it stands on: run directories, replaying a loadgen run, embeddings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loadgen.config import ClientConfig, RunConfig
from modm.workload.config import ArrivalConfig, ArrivalKind, TraceConfig, WorkloadConfig
from modm.workload.runs import load_run
from modm.workload.records import write_records
from modm.config.schema import SystemMode
from modm.sim import LatencyProfile, SimConfig, load_or_embed, simulate, workload_from_run
from modm.sim.cli import main


def test_run_writes_a_loadgen_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "run",
            "--parametric-hit-rate",
            "0.6",
            "-n",
            "150",
            "--warm-up",
            "20",
            "--arrival",
            "poisson",
            "--rate",
            "6",
            "--gpus",
            "4",
            "--profile",
            "a40",
            "--window-s",
            "120",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "150/150 ok" in printed and "events/s" in printed
    stored = load_run(out)  # loadgen reads it like a measured run
    assert len(stored.records) == 170 and stored.poisson_rate_per_min == 6.0
    assert stored.summarize().n_ok == 150 and stored.stats and stored.stats[-1].large is not None
    sim = json.loads((out / "sim.json").read_text())
    assert sim["monitor_decisions"] and sim["cost"]["requests"] == 170
    assert (out / "timeline.png").stat().st_size > 0 and (out / "latency_cdf.png").stat().st_size > 0


def test_bad_input_exits_with_status_2_and_names_the_problem(tmp_path, capsys):
    assert main(["run", "--system", "modm", "-n", "10", "--rate", "2"]) == 2
    assert "--trace" in capsys.readouterr().err
    assert (
        main(
            [
                "run",
                "--profile",
                str(tmp_path / "missing.json"),
                "--parametric-hit-rate",
                "0.5",
                "--rate",
                "2",
                "-n",
                "10",
            ]
        )
        == 2
    )
    assert "unknown latency profile" in capsys.readouterr().err


def _measured_run(tmp_path, profile: LatencyProfile):
    """A stand-in for a real loadgen run: its RunConfig stored with records of a vanilla server on 2 replicas."""
    tsv = tmp_path / "prompts.tsv"
    tsv.write_text("prompt\n" + "\n".join(f"a painting of object {i}" for i in range(80)) + "\n")
    config = RunConfig(
        name="measured",
        trace=TraceConfig(path=tsv, n_requests=60, warm_up=5),
        arrival=ArrivalConfig(kind=ArrivalKind.POISSON, rate_per_min=40.0),
        client=ClientConfig(url="http://127.0.0.1:9", api_key="secret"),
        reference_latency_s=2.0,
    )
    workload, _ = workload_from_run_config(config)
    result = simulate(SimConfig(system=SystemMode.VANILLA, n_gpus=2, profile=profile), workload)
    run_dir = tmp_path / "measured"
    write_records(
        run_dir / "records.parquet",
        result.to_records(),
        {"config": config.model_dump(mode="json"), "reference_latency_s": 2.0},
    )
    return run_dir, result


def workload_from_run_config(config: RunConfig):
    from modm.workload.prepare import prepare_workload
    from modm.sim import Workload

    requests, offsets = prepare_workload(config)
    return Workload.from_trace(config.name, requests, config.arrival, offsets), config


def test_from_run_replays_the_recorded_workload_and_prints_the_gap(tmp_path, capsys):
    profile = LatencyProfile(gpu="cpu", full_generation_s={"large": 2.0, "small": 0.4})
    profile_path = tmp_path / "profile.json"
    profile_path.write_text(profile.model_dump_json())
    run_dir, measured = _measured_run(tmp_path, profile)
    workload, config = workload_from_run(run_dir)
    assert type(config) is WorkloadConfig and config.trace.n_requests == 60  # the client part stays behind
    np.testing.assert_allclose(workload.offsets_s, measured.arrival_s)
    code = main(
        ["run", "--from-run", str(run_dir), "--system", "vanilla", "--gpus", "2", "--profile", str(profile_path)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "gap throughput" in printed and "+0.0%" in printed
    slower = tmp_path / "slower.json"
    slower.write_text(json.dumps({"gpu": "cpu", "full_generation_s": {"large": 4.0, "small": 0.8}}))
    main(["run", "--from-run", str(run_dir), "--system", "vanilla", "--gpus", "2", "--profile", str(slower)])
    gap_line = next(line for line in capsys.readouterr().out.splitlines() if "gap throughput" in line)
    assert float(gap_line.rsplit(" ", 1)[1].rstrip("%")) < -20


def test_embeddings_are_cached_by_prompt_and_only_missing_ones_are_embedded(tmp_path):
    calls: list[list[str]] = []

    def fake_embed(prompts):
        calls.append(list(prompts))
        x = np.array([[len(p), 1.0, p.count("a")] for p in prompts], dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    path = tmp_path / "emb.npz"
    first = load_or_embed(path, ["a cat", "a dog", "a cat"], fake_embed)
    assert first.shape == (3, 3) and np.array_equal(first[0], first[2]) and calls == [["a cat", "a dog"]]
    again = load_or_embed(path, ["a dog", "a bird"], fake_embed)
    assert calls[-1] == ["a bird"] and np.array_equal(again[0], first[1])
    load_or_embed(path, ["a bird", "a cat"], fake_embed)
    assert len(calls) == 2
    path.write_text("not npz")
    with pytest.raises(ValueError, match="not an embeddings file"):
        load_or_embed(path, ["x"], fake_embed)


def test_profile_is_fitted_to_a_runs_generate_timings(tmp_path, capsys):
    truth = LatencyProfile(gpu="cpu", full_generation_s={"large": 3.0, "small": 0.8}, fixed_s={"small": 0.2}, load_s={})
    from modm.sim import ParametricHitConfig

    from sim_workloads import poisson_workload

    config = SimConfig(n_gpus=4, profile=truth, parametric=ParametricHitConfig(hit_rate=0.7))
    result = simulate(config, poisson_workload(300, 2.0, seed=9))
    write_records(tmp_path / "run" / "records.parquet", result.to_records(), {"config": {"name": "light"}})
    out = tmp_path / "fitted.json"
    assert main(["profile", "--from-run", str(tmp_path / "run"), "--out", str(out)]) == 0
    capsys.readouterr()
    fitted = LatencyProfile.model_validate_json(out.read_text())
    assert fitted.full_generation_s["large"] == pytest.approx(3.0, rel=1e-3)
    assert fitted.full_generation_s["small"] == pytest.approx(0.8, rel=1e-3)
    assert fitted.fixed_s["small"] == pytest.approx(0.2, abs=1e-3)
