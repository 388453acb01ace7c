"""Model replicas' graceful-shutdown timeout covers their longest generation (issue 13): it is set at build time from
profiled_latency_s, which GPU configs must give."""

from pathlib import Path

import pytest
import yaml

from deployments.app import build_app, graceful_shutdown_s
from deployments.constants import GRACEFUL_SHUTDOWN_MARGIN
from modm.config import ConfigError, config_from_dict

CONFIGS = Path(__file__).resolve().parents[2] / "deployments" / "configs"
GPU_CONFIGS = sorted(CONFIGS.glob("gpu-*.yaml"))


def _deployments(app) -> dict:
    """name -> bound deployment, walking the application graph from the ingress."""
    found, todo = {}, [app]
    while todo:
        bound = todo.pop()._bound_deployment
        found[bound.name] = bound
        todo.extend(a for a in (*bound.init_args, *bound.init_kwargs.values()) if hasattr(a, "_bound_deployment"))
    return found


def test_gpu_model_without_profiled_latency_is_refused_naming_the_field():
    system = {"models": {"large": {"source": "a", "device": "cuda"}, "small": {"source": "b", "device": "cpu"}}}
    with pytest.raises(ConfigError, match=r"models\.large.*profiled_latency_s"):
        config_from_dict(system, "system")


def test_timeout_scales_the_profile_by_pixels_steps_and_margin():
    large = {"source": "a", "profiled_latency_s": 2.0, "default_size": 512, "max_size": 1024, "num_inference_steps": 50}
    system = config_from_dict(
        {
            "mode": "vanilla",
            "models": {"large": large},
            "limits": {"max_steps": 100},
            "serving": {"request_timeout_s": 1000},
        },
        "system",
    )
    assert graceful_shutdown_s(system.models.large, system) == pytest.approx(2.0 * 4 * 2 * GRACEFUL_SHUTDOWN_MARGIN)


def test_timeout_is_capped_by_and_defaults_to_the_request_timeout():
    system = config_from_dict(
        {
            "models": {"large": {"source": "a", "profiled_latency_s": 500.0}, "small": {"source": "b"}},
            "serving": {"request_timeout_s": 600},
        },
        "system",
    )
    assert graceful_shutdown_s(system.models.large, system) == 600  # no request outlives its timeout
    assert graceful_shutdown_s(system.models.small, system) == 600  # unprofiled: the safe default


@pytest.mark.parametrize("path", GPU_CONFIGS, ids=lambda p: p.name)
def test_shipped_gpu_configs_cover_a_generation(path):
    args = yaml.safe_load(path.read_text())["applications"][0]["args"]
    system = config_from_dict(args["system"], str(path))
    deployments = _deployments(build_app({**args, "check_resources": False}))
    for name, spec in (("LargeModel", system.models.large), ("SmallModel", system.models.small)):
        config = deployments[name]._deployment_config
        assert spec.profiled_latency_s is not None
        assert config.graceful_shutdown_timeout_s >= spec.profiled_latency_s * GRACEFUL_SHUTDOWN_MARGIN
        assert config.graceful_shutdown_wait_loop_s < config.graceful_shutdown_timeout_s
    # The router holds each request as long as the model does.
    assert deployments["Router"]._deployment_config.graceful_shutdown_timeout_s == system.serving.request_timeout_s


def test_a_batching_replica_holds_two_batches_and_its_timeout_covers_them():
    large = {
        "source": "a",
        "profiled_latency_s": 2.0,
        "default_size": 512,
        "max_size": 512,
        "num_inference_steps": 50,
        "batching": {"engine": "request", "max_batch_size": 4},
    }
    args = {
        "system": {
            "mode": "vanilla",
            "models": {"large": large},
            "limits": {"max_steps": 50},
            "serving": {"request_timeout_s": 1000},
        },
        "check_resources": False,
    }
    system = config_from_dict(args["system"], "system")
    assert graceful_shutdown_s(system.models.large, system) == pytest.approx(2.0 * 8 * GRACEFUL_SHUTDOWN_MARGIN)
    config = _deployments(build_app(args))["LargeModel"]._deployment_config
    assert config.max_ongoing_requests == 8  # one batch of four running, the next forming
    unbatched = {**args, "system": {**args["system"], "models": {"large": {**large, "batching": {"engine": "none"}}}}}
    assert _deployments(build_app(unbatched))["LargeModel"]._deployment_config.max_ongoing_requests == 1
