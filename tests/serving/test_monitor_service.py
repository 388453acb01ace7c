"""The global monitor service with fake pools and a manual clock: counts in, an allocation applied out."""

import asyncio

from serving_fakes import FakePool
from serving_kit import run

from modm.config import MonitorConfig
from modm.policy import WindowCounter
from modm.roles import ModelRole
from modm.serving.monitor import MonitorService


class ManualClock:
    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self):
        return self.now

    def wall(self):
        return 1_700_000_000.0 + self.now

    async def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def counts(arrivals: int, hits: int, k: int = 25) -> dict:
    counter = WindowCounter()
    for i in range(arrivals):
        counter.arrived()
        counter.decided(i < hits, k if i < hits else 0)
    return counter.take().as_dict()


def service(applied: list, **config) -> tuple[MonitorService, ManualClock]:
    clock = ManualClock()
    pools = {ModelRole.LARGE: FakePool(profile_s=6.0), ModelRole.SMALL: FakePool(profile_s=1.0)}

    async def apply(allocation):
        applied.append((allocation.large, allocation.small))

    cfg = MonitorConfig(gpu_budget=8, min_small=1, window_s=60, **config)
    return MonitorService(cfg, 50, pools, apply, clock=clock), clock


def test_a_window_of_reports_steps_algorithm_1_and_applies_its_allocation():
    applied = []
    monitor, clock = service(applied)
    monitor.report(counts(60, 54))  # two routers' reports merge into one window
    monitor.report(counts(60, 54))
    clock.now = 60.0
    allocation = run(monitor.step())
    assert applied == [(allocation.large, allocation.small)] and allocation.large + allocation.small <= 8
    view = monitor.get_allocation()
    assert view["history"][0]["R"] == 120.0 and abs(view["history"][0]["H"] - 0.9) < 1e-9
    assert view["throughput_per_min"] == {"large": 10.0, "small": 60.0}


def test_a_hit_heavy_load_moves_replicas_to_the_small_model():
    def after_five_windows(hits_per_300: int) -> tuple[int, int]:
        applied = []
        monitor, clock = service(applied)
        for window in range(1, 6):
            monitor.report(counts(300, hits_per_300))  # R = 300/min
            clock.now = 60.0 * window
            run(monitor.step())
        return applied[-1]

    miss_heavy, hit_heavy = after_five_windows(30), after_five_windows(285)
    assert hit_heavy[1] > miss_heavy[1] and hit_heavy[0] < miss_heavy[0]


def test_the_initial_allocation_is_retried_until_the_pools_answer():
    applied, failures = [], [RuntimeError("not up"), RuntimeError("not up")]
    monitor, clock = service(applied)

    async def flaky(allocation):
        if failures:
            raise failures.pop()
        applied.append(allocation)

    monitor._apply = flaky

    async def scenario():
        task = asyncio.ensure_future(monitor.run())
        while not applied:
            await asyncio.sleep(0)
        task.cancel()

    run(scenario())
    assert clock.sleeps[:2] == [1.0, 1.0] and len(applied) == 1


def test_throughput_is_what_the_pools_measure_at_the_batch_sizes_they_run():
    applied = []
    monitor, clock = service(applied)
    large, small = monitor.pools[ModelRole.LARGE], monitor.pools[ModelRole.SMALL]
    large.costs = {"max_batch_size": 4, "mean_batch_size": None, "seconds_per_image_step": {}}  # nothing run yet
    monitor.report(counts(60, 30))
    clock.now = 60.0
    run(monitor.step())
    assert monitor.get_allocation()["throughput_per_min"] == {"large": 10.0, "small": 60.0}  # the batch-1 profiles
    # The large replicas now run batches of ~4 at 0.03 s per image-step (50 steps): 40 generations/min each.
    large.costs = {"max_batch_size": 4, "mean_batch_size": 3.8, "seconds_per_image_step": {1: 0.12, 4: 0.03}}
    monitor.report(counts(60, 30))
    clock.now = 120.0
    run(monitor.step())
    throughput = monitor.get_allocation()["throughput_per_min"]
    assert abs(throughput["large"] - 40.0) < 1e-9 and throughput["small"] == 60.0
    assert small.costs["seconds_per_image_step"] == {}
