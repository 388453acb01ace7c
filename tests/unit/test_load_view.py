"""The shared load view: the board's sums over live routers, expiry of silent ones, and a router's view."""

import pytest

from modm.policy.load_view import LoadBoard, PeerLoad, pool_in_flight


def test_the_board_answers_each_router_the_sums_of_the_others():
    board = LoadBoard()
    assert board.report("a", {"large": 3, "small": 1}, ttl_s=1.0, now=0.0) == {}
    assert board.report("b", {"large": 2}, ttl_s=1.0, now=0.1) == {"large": 3, "small": 1}
    assert board.report("a", {"large": 0, "small": 4}, ttl_s=1.0, now=0.2) == {"large": 2}
    assert board.totals(now=0.3) == {"large": 2, "small": 4}
    assert board.by_router(now=0.3) == {"a": {"large": 0, "small": 4}, "b": {"large": 2}}


def test_a_router_that_stops_reporting_drops_out_when_its_report_expires():
    board = LoadBoard()
    board.report("dead", {"large": 5}, ttl_s=1.0, now=0.0)
    assert board.report("alive", {"large": 1}, ttl_s=1.0, now=0.9) == {"large": 5}
    assert board.report("alive", {"large": 1}, ttl_s=1.0, now=1.1) == {}  # "dead" expired at 1.0
    assert board.totals(now=1.2) == {"large": 1} and list(board.by_router(now=1.2)) == ["alive"]


@pytest.mark.parametrize(
    "router_id, in_flight, ttl_s",
    [("", {"large": 1}, 1.0), ("a", {"large": -1}, 1.0), ("a", {"large": 1.5}, 1.0), ("a", {"large": 1}, 0.0)],
)
def test_the_board_refuses_malformed_reports(router_id, in_flight, ttl_s):
    with pytest.raises(ValueError):
        LoadBoard().report(router_id, in_flight, ttl_s=ttl_s, now=0.0)


def test_a_router_sees_its_own_count_now_plus_the_others_last_answer():
    peers = PeerLoad(in_flight={"large": 4}, at=10.0)
    assert pool_in_flight(2, peers, "large", now=10.5, max_age_s=1.0) == 6
    assert pool_in_flight(2, peers, "small", now=10.5, max_age_s=1.0) == 2  # no other router sent it work


def test_without_a_fresh_answer_a_router_falls_back_to_its_own_count():
    assert pool_in_flight(3, None, "large", now=0.0, max_age_s=1.0) == 3
    stale = PeerLoad(in_flight={"large": 9}, at=0.0)
    assert pool_in_flight(3, stale, "large", now=1.5, max_age_s=1.0) == 3
    with pytest.raises(ValueError):
        pool_in_flight(-1, None, "large", now=0.0, max_age_s=1.0)
