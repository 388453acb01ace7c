"""LoadBoard: where the Router replicas share their requests in flight per model pool (modm.policy.load_view), one
replica, bound only when the app runs more than one Router. It holds nothing that outlives a report's expiry: a
replacement starts empty and is full again within one report interval."""

from __future__ import annotations

import time

from modm.policy.load_view import LoadBoard


class LoadBoardServer:
    def __init__(self):
        self.board = LoadBoard()

    async def report(self, router_id: str, in_flight: dict[str, int], ttl_s: float) -> dict[str, int]:
        return self.board.report(router_id, in_flight, ttl_s, time.monotonic())

    async def by_router(self) -> dict[str, dict[str, int]]:
        """Each live Router's requests in flight per pool, by its Serve replica id (operators, tests)."""
        return self.board.by_router(time.monotonic())
