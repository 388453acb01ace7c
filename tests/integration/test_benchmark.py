"""A few-request benchmark run end to end: vanilla and MoDM on the same workload and replica budget."""

import json

import pytest

pytestmark = pytest.mark.ray


def test_benchmark_runs_both_systems_and_writes_the_ratio_table(ray_cluster, serve_app, http_port, tiny_zoo,
                                                                  tmp_path, capsys):
    from deployments.benchmark import build_parser, run_benchmark

    trace = tmp_path / "prompts.tsv"
    trace.write_text("prompt\n" + "\n".join(
        ["a red fox in the snow", "a lighthouse in a storm", "a bowl of ramen", "an astronaut on a horse",
         "a steam train at dusk", "a jellyfish in deep water", "a violin on a chair", "a desert cactus at noon",
         "a snowy owl on a branch", "a neon city street"]) + "\n",
        encoding="utf-8")
    args = build_parser().parse_args([
        "--trace", str(trace), "--requests", "6", "--warm-up", "2", "--budget", "2", "--concurrency", "2",
        "--steps", "2", "--systems", "vanilla,modm-throughput", "--zoo", str(tiny_zoo.root),
        "--out", str(tmp_path / "bench")])
    result = run_benchmark(args, http_port)

    rows = {row["name"]: row for row in result["comparison"]["rows"]}
    assert set(rows) == {"vanilla", "modm-throughput"}
    assert result["reference_latency_s"] > 0
    for name in rows:
        assert result["runs"][name]["summary"]["n_ok"] == 6
    assert rows["vanilla"]["hit_rate"] == 0
    saved = json.loads((tmp_path / "bench" / "benchmark.json").read_text())
    assert saved["comparison"]["baseline"] == "vanilla"
    assert "x base" in capsys.readouterr().out
