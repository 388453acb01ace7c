"""The app builder: argument validation, resource arithmetic, and a clear refusal when the cluster is too small."""

import pytest

from deployments.app import AppArgs, build_app, model_autoscaling, required_resources
from modm.config import config_from_dict

SYSTEM = {"models": {"large": {"source": "a"}, "small": {"source": "b"}}, "monitor": {"gpu_budget": 4}}


def test_required_resources_count_the_gpu_budget_once():
    args = AppArgs(
        system=SYSTEM,
        actor_options={"LargeModel": {"num_gpus": 1}, "SmallModel": {"num_gpus": 1}, "Embedder": {"num_gpus": 0.5}},
    )
    need = required_resources(args.system_config(), args)
    assert need["GPU"] == pytest.approx(4 * 1 + 0.5)
    # N model replicas, Router, Embedder, CacheIndex, Monitor, ResponseStore, Ingress
    assert need["CPU"] == pytest.approx(4 * 1 + 0.1 + 1 + 0.5 + 0.1 + 0.1 + 0.05)


def test_required_resources_count_every_router_and_ingress_replica_and_the_load_board():
    system = {**SYSTEM, "serving": {"router_replicas": 3, "ingress_replicas": 2}}
    args = AppArgs(system=system)
    need = required_resources(args.system_config(), args)
    assert need["CPU"] == pytest.approx(4 * 1 + 3 * 0.1 + 1 + 0.5 + 0.1 + 0.1 + 2 * 0.05 + 0.05)


def test_model_replica_bounds_follow_the_budget():
    system = config_from_dict({**SYSTEM, "monitor": {"gpu_budget": 4, "min_small": 1}})
    large, small = model_autoscaling(system, "large"), model_autoscaling(system, "small")
    assert (large["min_replicas"], large["max_replicas"], large["initial_replicas"]) == (1, 3, 3)
    assert (small["min_replicas"], small["max_replicas"], small["initial_replicas"]) == (1, 3, 1)
    assert large["policy"]["policy_function"] == "deployments.autoscaling:monitor_target_policy"


@pytest.mark.parametrize(
    "args, message",
    [
        ({}, "exactly one"),
        ({"system": SYSTEM, "config": "x.yaml"}, "exactly one"),
        ({"system": SYSTEM, "actor_options": {"Nope": {}}}, "unknown deployment"),
        ({"system": SYSTEM, "actor_options": {"Router": {"num_cpu": 1}}}, "unsupported option"),
        ({"system": {**SYSTEM, "monitor": {"gpu_budget": 0}}}, "gpu_budget"),
        ({"config": "/nonexistent/system.yaml"}, "not found"),
    ],
)
def test_bad_app_args(args, message):
    with pytest.raises(ValueError, match=message):
        build_app(args)


@pytest.mark.parametrize(
    "device, options, strategy, rank",
    [
        ("cuda", {"num_cpus": 2}, "STRICT_PACK", {"CPU": 1.0, "GPU": 1.0}),
        ("cpu", {"num_cpus": 0.5}, "PACK", {"CPU": 1.0}),
    ],
)
def test_a_parallel_model_declares_its_ranks_as_placement_group_bundles(device, options, strategy, rank):
    """Issue 13: Serve reserves the ranks with each replica (the replica's own bundle first), so Serve and the
    autoscaler see their devices and remove them with the replica."""
    from deployments.app import parallel_placement
    from modm.config import ModelSpec

    spec = ModelSpec(
        source="a", device=device, profiled_latency_s=10.0, parallel={"method": "distrifusion", "world_size": 2}
    )
    placement = parallel_placement(spec, options)
    assert placement["placement_group_strategy"] == strategy
    assert placement["placement_group_bundles"] == [{"CPU": float(options["num_cpus"])}, rank, rank]
    assert parallel_placement(ModelSpec(source="a"), options) == {}  # one device: no placement group


@pytest.mark.ray
def test_a_cluster_too_small_is_refused_before_deploying(ray_cluster):
    with pytest.raises(ValueError, match="cannot hold this app"):
        build_app({"system": {**SYSTEM, "monitor": {"gpu_budget": 40}}})
    with pytest.raises(ValueError, match="GPU: needs 4"):
        build_app({"system": SYSTEM, "actor_options": {"LargeModel": {"num_gpus": 1}, "SmallModel": {"num_gpus": 1}}})
