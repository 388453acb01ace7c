"""The monitor's R, H and P(k) count arrivals and decisions, not completions (issue 13)."""

import pytest

from modm.policy import WindowCounter, WindowCounts


def test_overload_rejected_requests_still_count_in_r():
    """60 requests arrive in a minute; 40 of them are rejected (429/503) or time out: R is still 60/min."""
    window = WindowCounter()
    for i in range(60):
        window.arrived()
        if i % 3 == 0:  # a third reach the decision (the rest were rejected before or timed out in retrieval)
            window.decided(hit=False)
    stats = window.close(60.0, total_steps=50)
    assert stats.request_rate == pytest.approx(60.0)


def test_backed_up_misses_do_not_bias_h_toward_hits():
    """Ten hits and ten misses are decided; only the hits finish within the window (misses back up). H is 0.5,
    not the 1.0 a completion count would give."""
    window = WindowCounter()
    for _ in range(10):
        window.arrived()
        window.decided(hit=True, k=25)
        window.arrived()
        window.decided(hit=False)
    stats = window.close(30.0, total_steps=50)
    assert stats.hit_rate == pytest.approx(0.5)
    assert stats.request_rate == pytest.approx(40.0)
    assert dict(stats.k_mix) == {25: 10}


def test_k_mix_is_over_hits_and_counts_reset_on_close():
    window = WindowCounter()
    for k in (5, 5, 30):
        window.arrived()
        window.decided(hit=True, k=k)
    first = window.close(60.0, total_steps=50)
    assert dict(first.k_mix) == {5: 2, 30: 1}
    assert first.hit_rate == 1.0
    empty = window.close(60.0, total_steps=50)
    assert empty.request_rate == 0 and empty.hit_rate == 0 and dict(empty.k_mix) == {}


def test_router_reports_merge_into_the_monitor_window():
    routers = [WindowCounter(), WindowCounter()]
    for router, hits in zip(routers, (3, 1)):
        for i in range(4):
            router.arrived()
            router.decided(hit=i < hits, k=10)
    monitor = WindowCounter()
    for router in routers:
        monitor.merge(WindowCounts.from_dict(router.take().as_dict()))  # the dict is what travels over Ray
        assert router.peek() == WindowCounts()
    stats = monitor.close(60.0, total_steps=50)
    assert stats.request_rate == 8 and stats.hit_rate == 0.5 and dict(stats.k_mix) == {10: 4}


@pytest.mark.parametrize(
    "bad", [{"arrivals": -1}, {"hits": 2, "decided": 1, "k_counts": {5: 2}}, {"hits": 1, "decided": 1, "k_counts": {}}]
)
def test_inconsistent_counts_are_refused(bad):
    with pytest.raises(ValueError):
        WindowCounts(**bad)
