"""A few-request benchmark run end to end: vanilla, MoDM and NIRVANA on the same workload and replica budget,
with the quality table over the images each served."""

import json

import pytest

pytestmark = pytest.mark.ray


def test_benchmark_runs_every_baseline_and_writes_both_tables(serve_http, http_port, tiny_zoo, tmp_path, capsys):
    from tools.benchmark import build_parser, run_benchmark

    trace = tmp_path / "prompts.tsv"
    trace.write_text(
        "prompt\n"
        + "\n".join(
            [
                "a red fox in the snow",
                "a lighthouse in a storm",
                "a bowl of ramen",
                "an astronaut on a horse",
                "a steam train at dusk",
                "a jellyfish in deep water",
                "a violin on a chair",
                "a desert cactus at noon",
                "a snowy owl on a branch",
                "a neon city street",
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    args = build_parser().parse_args(
        [
            "--trace",
            str(trace),
            "--requests",
            "4",
            "--warm-up",
            "1",
            "--budget",
            "2",
            "--concurrency",
            "2",
            "--steps",
            "26",
            "--systems",
            "vanilla,modm-throughput,nirvana",
            "--zoo",
            str(tiny_zoo.root),
            "--out",
            str(tmp_path / "bench"),
            "--sweep-rates",
            "120",
            "--sweep-requests",
            "2",
        ]
    )
    result = run_benchmark(args, http_port)

    rows = {row["name"]: row for row in result["comparison"]["rows"]}
    assert set(rows) == {"vanilla", "modm-throughput", "nirvana"}
    assert result["reference_latency_s"] > 0
    for name in rows:
        assert result["runs"][name]["summary"]["n_ok"] == 4
    assert rows["vanilla"]["hit_rate"] == 0
    for name in rows:  # GPU-seconds per image; no NVML on a CPU: joules absent, not 0
        cost = result["runs"][name]["cost_per_image"]
        assert cost["busy_gpu_s"] > 0 and cost["provisioned_gpu_s"] > 0 and cost["joules"] is None
    saved = json.loads((tmp_path / "bench" / "benchmark.json").read_text())
    assert saved["comparison"]["baseline"] == "vanilla"
    sweep = {(p["system"], p["rate_per_min"]): p for p in saved["slo_sweep"]["points"]}
    assert set(sweep) == {(name, 120.0) for name in rows} and (tmp_path / "bench" / "slo_vs_rate.png").is_file()
    quality = {row["system"]: row for row in saved["quality"]["rows"]}
    assert set(quality) == set(rows) and quality["vanilla"]["fid_vs_reference"] == 0.0
    assert all(row["n"] == 4 and "clip" in row["means"] for row in quality.values())
    assert (tmp_path / "bench" / "nirvana" / "images").is_dir()
    out = capsys.readouterr().out
    assert "x base" in out and "FID vs vanilla" in out
    assert "mean batch size per model pass" in out  # none of these systems batches: each says so
    assert all("batching" in result["runs"][name] for name in rows)

    with pytest.raises(ValueError, match="--steps above 25"):
        run_benchmark(
            build_parser().parse_args(
                ["--trace", str(trace), "--steps", "20", "--systems", "vanilla,nirvana", "--out", str(tmp_path / "b2")]
            ),
            http_port,
        )
