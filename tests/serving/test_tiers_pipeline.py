"""Small-model tiers in the serving path: the router follows the monitor's tier, and the monitor service chooses it
from its pools (modm.serving.tiers, modm.serving.monitor)."""

import pytest
from serving_fakes import FakeEmbedder, FakeMonitor, FakePool, vector_at
from serving_kit import Harness, run
from test_monitor_service import ManualClock, counts

from modm.cache import ImageCache
from modm.config import MonitorConfig, config_from_dict
from modm.roles import ModelRole
from modm.serving import ImageRequest
from modm.serving.monitor import MonitorService
from modm.serving.services import ImageCacheService
from modm.serving.tiers import TieredPool, routed_pool

VECTORS = {"a cat": vector_at(1.0), "a cat, painted": vector_at(0.96), "a cat, sketch": vector_at(0.85)}


def tiered_config(cache_dir):
    return config_from_dict(
        {
            "mode": "modm",
            "models": {
                "large": {"source": "fake/large", "num_inference_steps": 50},
                "small": {"source": "fake/sdxl", "num_inference_steps": 50, "profiled_latency_s": 2.0},
                "small_tiers": [{"source": "fake/sana", "num_inference_steps": 50, "profiled_latency_s": 0.5}],
            },
            "embedder": {"kind": "minilm", "device": "cpu"},
            "policy": {"k_table": "minilm-text"},
            "cache": {"directory": str(cache_dir), "hnsw_min_entries": 10_000},
        },
        "test",
    )


def test_hits_are_refined_by_the_tier_the_monitor_chose(tmp_path):
    config = tiered_config(tmp_path / "cache")
    sdxl, sana = FakePool(), FakePool()
    monitor = FakeMonitor({"large": 1, "small": 1, "tier": "small"})
    cache = ImageCache(config.cache, 8)
    h = Harness(
        config,
        embedder=FakeEmbedder(VECTORS),
        cache=ImageCacheService(cache),
        monitor=monitor,
        pools={ModelRole.LARGE: FakePool(), ModelRole.SMALL: TieredPool({"small": sdxl, "small2": sana})},
    )

    served = []

    async def scenario():
        await h.pipeline.start()
        served.append(await h.pipeline.generate(ImageRequest("a cat", seed=7)))
        await h.pipeline.drain_admissions()
        served.append(await h.pipeline.generate(ImageRequest("a cat, painted", seed=8)))
        monitor.allocation = {"large": 1, "small": 1, "tier": "small2", "tiers": {"budget_share": {"small": 1.2}}}
        await h.pipeline.report_window()
        served.append(await h.pipeline.generate(ImageRequest("a cat, sketch", seed=9)))
        return await h.pipeline.stats()

    try:
        stats = run(scenario())
    finally:
        cache.close()
    # Each answer names the model that served it: the large model (no tier), then each hit's tier.
    assert [(s.decision.model, s.decision.tier) for s in served] == [
        (ModelRole.LARGE, None),
        (ModelRole.SMALL, "small"),
        (ModelRole.SMALL, "small2"),
    ]
    assert [c[:2] for c in sdxl.calls if c[0] == "refine"] == [("refine", "a cat, painted")]
    assert [c[:2] for c in sana.calls if c[0] == "refine"] == [("refine", "a cat, sketch")]
    assert stats["tier"] == "small2" and stats["tier_switches"] == 1
    assert stats["monitor"]["tiers"] == {"budget_share": {"small": 1.2}}
    assert h.pipeline.latency_s[ModelRole.SMALL] == 0.5  # admission control on the new tier's latency


def test_a_tiered_pool_refuses_an_unknown_tier_and_a_routed_request_keeps_its_tier():
    sdxl, sana = FakePool(), FakePool()
    pool = TieredPool({"small": sdxl, "small2": sana})
    assert pool.tier == "small"
    routed_to = pool.tier
    pool.tier = "small2"  # the monitor switched while the request waited
    assert routed_pool(pool, routed_to) is sdxl and routed_pool(pool, None) is pool and routed_pool(sana, "x") is sana
    with pytest.raises(ValueError, match="unknown small-model tier"):
        pool.tier = "small3"


def test_the_monitor_service_moves_hits_to_the_cheaper_tier_and_its_replicas_with_them():
    clock, applied = ManualClock(), []
    large, sdxl, sana = FakePool(profile_s=6.0), FakePool(profile_s=2.0), FakePool(profile_s=0.5)

    async def apply(allocation):
        applied.append(allocation.replicas())

    config = MonitorConfig(gpu_budget=8, min_small=1, window_s=60, kp=1.0, ki=0.0, kd=0.0)
    service = MonitorService(
        config,
        50,
        {ModelRole.LARGE: large, ModelRole.SMALL: sdxl},
        apply,
        tiers={"small": sdxl, "small2": sana},
        profiled_s={"small2": 0.5},
        clock=clock,
    )
    # 120 req/min, 90% hits at k=25: misses alone need 1.2 replicas (P_large = 10/min); hits on SDXL (30/min) 1.8
    # more, on SANA (120/min) 0.45: SDXL's share is 3.0/8 = 0.375, well within headroom.
    service.report(counts(120, 108))
    clock.now = 60.0
    calm = run(service.step())
    assert calm.tier == "small" and applied[-1] == {"small": calm.small, "small2": 0}
    # 480 req/min: SDXL needs (4.8 + 7.2) / 8 = 1.5 of the budget, SANA (4.8 + 1.8) / 8 = 0.83.
    service.report(counts(480, 432))
    clock.now = 120.0
    busy = run(service.step())
    assert busy.tier == "small2" and applied[-1] == {"small": 0, "small2": busy.small}
    view = service.get_allocation()
    assert view["tier"] == "small2" and view["tiers"]["budget_share"]["small"] == pytest.approx(1.5)
    assert view["tiers"]["throughput_per_min"] == {"small": 30.0, "small2": 120.0}
    assert view["throughput_per_min"] == {"large": 10.0, "small": 120.0}
    assert view["history"][-1]["tier"] == "small2"
