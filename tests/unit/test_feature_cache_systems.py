"""The benchmark's -accelerated systems: the same workload settings and budget as the systems they accelerate, plus a
feature cache per model and step batching; the others run no feature cache."""

from __future__ import annotations

from pathlib import Path

import yaml

from modm.config import config_from_dict
from tools.benchmark import ACCELERATED_FEATURE_CACHES, SYSTEMS, system_variants
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
                assert spec.batching.engine.value == "step"
            else:
                assert spec.feature_cache is None
    assert (
        variants["vanilla-accelerated"]["mode"] == "vanilla"
        and "small" not in variants["vanilla-accelerated"]["models"]
    )
    assert variants["modm-accelerated"]["monitor"]["mode"] == "throughput"


def test_the_world_benchmark_serves_the_world_models_on_a_judged_world_trace(tmp_path: Path):
    from modm.world.cli import COMMITTED_WORLD
    from tools.benchmark import base_system, build_parser

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
