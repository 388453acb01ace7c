"""Small-model tiers in the Serve app, without starting Ray: one deployment per tier, replica bounds that let a tier
go to zero, resources counted once, and the autoscaling policy reading the monitor's published target."""

from types import SimpleNamespace

import pytest

import deployments.autoscaling as autoscaling
from deployments.app import AppArgs, deployment_names, model_autoscaling, required_resources, tier_deployment_name
from modm.config import config_from_dict

TIERED = {
    "models": {
        "large": {"source": "sd35"},
        "small": {"source": "sdxl", "profiled_latency_s": 16.5},
        "small_tiers": [{"source": "sana", "profiled_latency_s": 3.0}],
    },
    "monitor": {"gpu_budget": 4, "min_small": 1},
}


def test_each_tier_is_a_deployment_and_may_go_to_zero():
    system = config_from_dict(TIERED)
    names = deployment_names(system)
    assert names[:3] == ("LargeModel", "SmallModel", "SmallModel2") and "Monitor" in names
    assert tier_deployment_name("small2") == "SmallModel2"
    bounds = {
        role: (a["min_replicas"], a["max_replicas"], a["initial_replicas"])
        for role in ("large", "small", "small2")
        for a in [model_autoscaling(system, role)]
    }
    assert bounds == {"large": (1, 3, 3), "small": (0, 3, 1), "small2": (0, 3, 0)}


def test_resources_count_the_budget_once_at_the_widest_tier():
    args = AppArgs(
        system=TIERED,
        actor_options={"LargeModel": {"num_gpus": 1}, "SmallModel": {"num_gpus": 1}, "SmallModel2": {"num_gpus": 1}},
    )
    assert required_resources(args.system_config(), args)["GPU"] == pytest.approx(4)
    assert args.options_for("SmallModel2")["num_gpus"] == 1
    assert AppArgs(system=TIERED).options_for("SmallModel2") == {"num_cpus": 1}  # SmallModel's defaults
    with pytest.raises(ValueError, match="unknown deployment"):
        AppArgs(system=TIERED, actor_options={"SmallModel1": {}})


def test_the_policy_reads_the_published_target_and_clamps_it(monkeypatch):
    store = {}
    monkeypatch.setattr(
        autoscaling.internal_kv,
        "_internal_kv_put",
        lambda k, v, overwrite, namespace: store.update({(namespace, k): v}),
    )
    monkeypatch.setattr(autoscaling.internal_kv, "_internal_kv_get", lambda k, namespace: store.get((namespace, k)))

    def ctx(name, current=1, low=0, high=3):
        return SimpleNamespace(
            app_name="modm",
            deployment_name=name,
            target_num_replicas=current,
            capacity_adjusted_min_replicas=low,
            capacity_adjusted_max_replicas=high,
            policy_state={},
        )

    assert autoscaling.monitor_target_policy(ctx("SmallModel2", current=0))[0] == 0  # nothing published: hold
    autoscaling.publish_target("modm", "SmallModel2", 3)
    autoscaling.publish_target("modm", "SmallModel", 0)
    assert autoscaling.monitor_target_policy(ctx("SmallModel2", current=0))[0] == 3
    assert autoscaling.monitor_target_policy(ctx("SmallModel"))[0] == 0  # a tier not chosen goes to zero
    autoscaling.publish_target("modm", "LargeModel", 9)
    assert autoscaling.monitor_target_policy(ctx("LargeModel", low=1))[0] == 3
    assert (
        autoscaling.monitor_target_policy(SimpleNamespace(**{**vars(ctx("LargeModel")), "app_name": "other"}))[0] == 1
    )
