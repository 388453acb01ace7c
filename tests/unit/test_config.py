import pytest

from modm.config import ConfigError, SystemMode, config_from_dict, load_config
from modm.demo import default_config_path
from tools.serve_configs import local_config_path, tiny_config_path

BASE = {"models": {"large": {"source": "a"}, "small": {"source": "b"}}}


def with_(**overrides):
    data = {**BASE, **overrides}
    return data


def test_embedded_default_config_is_valid():
    cfg = load_config(default_config_path())
    assert cfg.mode is SystemMode.MODM
    assert cfg.embedder.kind.value == "hf_clip" and cfg.embedder.retrieval.value == "text-image"
    # the table fitted in the world with MoDM's rule on CLIPScore (modm/world/README.md), not the paper's ViT-L/14 one
    assert [(r.min_score, r.k) for r in cfg.policy.k_table] == [(0.694, 30), (0.686, 15), (0.644, 10), (0.612, 5)]
    tiny = load_config(tiny_config_path())
    assert tiny.embedder.kind.value == "minilm" and tiny.models.large.source == ".modm/zoo/large"


def test_the_in_process_demo_runs_the_system_the_local_serve_config_serves():
    # Two files (modm's own, so the library never reads the Serve layer's data); one system. Only where the cache
    # lives differs.
    def without_cache_directory(cfg):
        data = cfg.model_dump(mode="json")
        data["cache"].pop("directory")
        return data

    assert without_cache_directory(load_config(default_config_path())) == without_cache_directory(
        load_config(local_config_path())
    )


def test_defaults_are_modm_paper_constants():
    cfg = config_from_dict(BASE)
    assert [(r.min_score, r.k) for r in cfg.policy.k_table] == [
        (0.30, 30),
        (0.29, 25),
        (0.28, 15),
        (0.27, 10),
        (0.25, 5),
    ]
    assert (cfg.monitor.kp, cfg.monitor.ki, cfg.monitor.kd) == (0.6, 0.05, 0.05)
    assert cfg.monitor.window_s == 180 and cfg.policy.total_steps == 50


@pytest.mark.parametrize(
    "data, field, value",
    [
        (
            with_(models={"large": {"source": "a", "dtype": "float8"}, "small": {"source": "b"}}),
            "models.large.dtype",
            "float8",
        ),
        (with_(policy={"k_table": [{"min_score": 0.3, "k": 10}, {"min_score": 0.2, "k": 20}]}), "policy", "k=10"),
        (with_(policy={"k_table": [{"min_score": 0.2, "k": 20}, {"min_score": 0.3, "k": 10}]}), "policy", "0.2"),
        (with_(policy={"k_table": "nope"}), "policy.k_table", "nope"),
        (with_(cache={"capacity": 0}), "cache.capacity", "0"),
        (with_(cache={"admission": "cache-some"}), "cache.admission", "cache-some"),
        (with_(monitor={"gpu_budget": 1, "min_small": 1}), "monitor", "min_small=1"),
        (
            with_(models={"large": {"source": "a", "device": "gpu"}, "small": {"source": "b"}}),
            "models.large.device",
            "gpu",
        ),
        (with_(bogus=1), "bogus", "1"),
        (with_(embedder={"kind": "minilm", "retrieval": "text-image"}), "embedder", "image tower"),
    ],
)
def test_errors_name_field_and_value(data, field, value):
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    message = str(err.value)
    assert field in message and value in message, message


def test_modm_mode_needs_a_small_model():
    with pytest.raises(ConfigError, match="models.small"):
        config_from_dict({"models": {"large": {"source": "a"}}})
    assert config_from_dict({"mode": "vanilla", "models": {"large": {"source": "a"}}}).models.small is None


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(binary)


@pytest.mark.parametrize("name", ["local.yaml", "local-tiny.yaml", "gpu-sd35-sdxl.yaml", "gpu-flux-sana.yaml"])
def test_shipped_serve_configs_are_valid(name):
    from pathlib import Path

    import yaml

    from deployments.app import AppArgs

    path = Path(__file__).parents[2] / "deployments" / "configs" / name
    cfg = load_config(path)
    assert cfg.mode is SystemMode.MODM and cfg.models.small is not None
    args = AppArgs.model_validate(yaml.safe_load(path.read_text())["applications"][0]["args"])
    if name.startswith("gpu"):
        assert args.options_for("LargeModel")["num_gpus"] == 1 and cfg.policy.k_table[-1].min_score == 0.25


def test_the_light_deployments_run_on_the_replica_loop_and_keep_the_callers_runtime_env():
    from deployments.app import SAME_LOOP_ENV, AppArgs

    mine = {"env_vars": {"MY_FLAG": "1", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1"}, "pip": ["x"]}
    args = AppArgs.model_validate({"config": "unused.yaml", "actor_options": {"Router": {"runtime_env": mine}}})
    router = args.options_for("Router")["runtime_env"]
    assert router["pip"] == ["x"] and router["env_vars"]["MY_FLAG"] == "1"
    assert router["env_vars"]["RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"] == "1"  # the caller's value wins
    assert args.options_for("Embedder")["runtime_env"] == {"env_vars": SAME_LOOP_ENV}
    assert "runtime_env" not in args.options_for("LargeModel")  # model replicas keep Serve's defaults
    assert mine["env_vars"] == {"MY_FLAG": "1", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1"}  # not modified


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"embedder": {"kind": "open_clip"}}, "text->text"),
        ({"policy": {"total_steps": 25}}, "must be below total_steps=25"),
        ({"policy": {"k_table": "minilm-text"}}, "own k table"),
        ({"cache": {"capacity": 4}}, "holds none"),
        (
            {"models": {"large": {"source": "a", "parallel": {"method": "distrifusion", "world_size": 2}}}},
            "parallel inference",
        ),
    ],
)
def test_nirvana_mode_needs_what_it_resumes_from(changes, message):
    nirvana = {"mode": "nirvana", "models": {"large": {"source": "a"}}, "embedder": {"kind": "minilm"}}
    assert (
        config_from_dict(nirvana).policy.k_table
        == config_from_dict({**nirvana, "policy": {"k_table": "nirvana"}}).policy.k_table
    )
    with pytest.raises(ConfigError, match=message):
        config_from_dict({**nirvana, **changes})
