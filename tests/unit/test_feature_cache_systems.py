"""The benchmark's -accelerated systems: the same workload settings and budget as the systems they accelerate, plus a
feature cache per model and step batching; the others run no feature cache."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from modm.config import ConfigError, config_from_dict
from modm.workload.records import StatsSample
from tools.benchmark import (
    ACCELERATED_BATCHING,
    ACCELERATED_FEATURE_CACHES,
    SYSTEMS,
    batching_args,
    build_parser,
    k_table_arg,
    run_batching_view,
    system_variants,
    trace_ceiling,
    with_k_table,
)
from tools.serve_configs import tiny_config_path


def test_accelerated_systems_add_feature_caches_and_batching_and_nothing_else(tmp_path: Path):
    base = yaml.safe_load(tiny_config_path().read_text(encoding="utf-8"))["applications"][0]["args"]["system"]
    variants = system_variants(base, 3, 30, 64, 5.0, tmp_path)
    assert set(variants) == set(SYSTEMS)
    for name, system in variants.items():
        config = config_from_dict(system, name)
        assert config.monitor.gpu_budget == 3
        roles = ["large"] + (["small"] if config.models.small is not None else [])
        for role in roles:
            spec = getattr(config.models, role)
            assert spec.num_inference_steps == 30 and spec.default_size == 64
            if name.endswith("-accelerated"):
                assert spec.feature_cache.model_dump(exclude_unset=True) == ACCELERATED_FEATURE_CACHES[role]
                assert spec.batching.engine.value == "request"  # where their passes batch
            else:
                assert spec.feature_cache is None
    assert (
        variants["vanilla-accelerated"]["mode"] == "vanilla"
        and "small" not in variants["vanilla-accelerated"]["models"]
    )
    assert variants["modm-accelerated"]["monitor"]["mode"] == "throughput"


def test_the_world_benchmark_serves_the_world_models_on_a_judged_world_trace(tmp_path: Path):
    from modm.world.cli import COMMITTED_WORLD
    from tools.benchmark import base_system

    args = build_parser().parse_args(["--world", str(COMMITTED_WORLD), "--requests", "12", "--warm-up", "3"])
    args.out = tmp_path / "bench"
    base, truth = base_system(args)
    assert args.size == 32  # the world's image size
    assert base["models"]["large"]["source"] == str(COMMITTED_WORLD.resolve() / "large")
    assert base["embedder"] == {**base["embedder"], "kind": "hf_clip", "retrieval": "text-image"}
    prompts = args.trace.read_text(encoding="utf-8").splitlines()[1:]
    assert len(prompts) == 15 and all(line.split("\t", 1)[1] in truth for line in prompts)
    for name, system in system_variants(base, 3, 50, args.size, 5.0, tmp_path).items():
        config_from_dict(system, name)


def test_k_table_option_parses_rules_and_refuses_bad_ones():
    base = yaml.safe_load(tiny_config_path().read_text(encoding="utf-8"))["applications"][0]["args"]["system"]
    args = build_parser().parse_args(["--world", "w", "--k-table", "0.80:30, 0.7:10"])
    assert args.k_table == [{"min_score": 0.8, "k": 30}, {"min_score": 0.7, "k": 10}]
    system = with_k_table(base, args.k_table)
    assert [(r.min_score, r.k) for r in config_from_dict(system).policy.k_table] == [(0.8, 30), (0.7, 10)]
    assert base.get("policy", {}).get("k_table") != args.k_table  # the base is left as it was
    with pytest.raises(argparse.ArgumentTypeError, match="not SCORE:K"):
        k_table_arg("0.8:thirty")
    with pytest.raises(SystemExit):  # argparse reports a malformed rule as a usage error
        build_parser().parse_args(["--world", "w", "--k-table", "0.8-30"])
    with pytest.raises(ConfigError, match="strictly decrease"):
        with_k_table(base, [{"min_score": 0.7, "k": 10}, {"min_score": 0.8, "k": 30}])


def test_a_run_reports_the_mean_of_its_polls_batching_not_the_last_one():
    samples = [
        StatsSample(t_s=0.0, batching_json='{"large": {"max_batch_size": 4, "mean_batch_size": 3.0}}'),
        StatsSample(t_s=1.0),  # a poll that carried no batching view
        StatsSample(t_s=2.0, batching_json='{"large": {"max_batch_size": 4, "mean_batch_size": null}, "small": null}'),
        StatsSample(
            t_s=3.0,
            batching_json=json.dumps(
                {"large": {"max_batch_size": 4, "mean_batch_size": 1.0, "seconds_per_image_step": {"1": 0.02}}}
            ),
        ),
    ]
    # the last poll alone (1.0: the run's stragglers) would hide the batches of 3 the run mostly formed
    assert run_batching_view(samples) == {
        "large": {"max_batch_size": 4, "mean_batch_size": 2.0, "polls": 2, "seconds_per_image_step": {"1": 0.02}}
    }
    assert run_batching_view([StatsSample(t_s=0.0)]) is None and run_batching_view([]) is None


def test_the_batching_options_set_the_plain_and_the_accelerated_engines():
    plain, accelerated = batching_args(build_parser().parse_args(["--world", "w"]))
    assert plain is None and accelerated == ACCELERATED_BATCHING  # --batching none: the base config's engines
    args = build_parser().parse_args(
        ["--world", "w", "--batching", "step", "--max-wait-ms", "30", "--max-batch-size", "8"]
    )
    plain, accelerated = batching_args(args)
    assert plain == {"engine": "step", "max_batch_size": 8, "max_wait_ms": 30.0}
    assert accelerated == {"engine": "request", "max_batch_size": 8, "max_wait_ms": 30.0}


def test_the_trace_ceiling_hits_every_servable_request_at_the_largest_k():
    from modm.world.cli import COMMITTED_WORLD
    from modm.world.model_steps import serving_step_ratio

    ratio = serving_step_ratio(COMMITTED_WORLD)
    args = build_parser().parse_args(["--world", str(COMMITTED_WORLD), "--steps", "50"])
    ceiling = trace_ceiling(args, [True, False, True, True])
    assert ceiling["servable"] == 0.75 and ceiling["k"] == 30 and ceiling["large_small_step_ratio"] == ratio
    assert ceiling["gain_bound"] == pytest.approx(1 / (0.25 + 0.75 * (20 / 50) / ratio))
    # a shorter schedule scales MoDM's k = 30 of 50 to it; nothing servable means no gain
    short = trace_ceiling(build_parser().parse_args(["--world", str(COMMITTED_WORLD), "--steps", "20"]), [False])
    assert short["k"] == 12 and short["gain_bound"] == 1.0
