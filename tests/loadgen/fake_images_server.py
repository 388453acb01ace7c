"""A small in-process server implementing the images API contract, for the load generator's tests.

It behaves like a tiny MoDM: a per-tenant list of previous prompts, word-overlap (Jaccard) similarity as the score,
MoDM-style score -> k steps, hits served "by the small model" faster than misses, and ``replicas`` requests at once.
Knobs make it fail the ways a real server does: stop answering after N requests, answer slowly, or return errors
for prompts that start with "!429" / "!500", or an image-less 200 for "!empty". It binds 127.0.0.1 only, on a free port,
in a background thread.
"""

from __future__ import annotations

import asyncio
import base64
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web

_SIZE = re.compile(r"^[1-9][0-9]*x[1-9][0-9]*$")
# Jaccard score -> k steps skipped of 50 (shape of MoDM's table, thresholds for word overlap).
_K_TABLE = ((0.9, 30), (0.8, 25), (0.7, 15), (0.6, 10), (0.5, 5))


@dataclass
class FakeServerSettings:
    miss_latency_s: float = 0.05
    hit_latency_s: float = 0.02
    replicas: int = 2
    cache: bool = True  # False = a vanilla server: every request is a miss on the large model
    stop_answering_after: int | None = None  # requests after this many hang until the server shuts down
    require_key: str | None = None


@dataclass
class _State:
    prompts: dict[str, list[set[str]]] = field(default_factory=dict)
    requests: int = 0
    hits: int = 0
    k_mix: Counter = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    tenants: Counter = field(default_factory=Counter)
    bodies: list = field(default_factory=list)


def _words(prompt: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", prompt.lower()))


def _error(status: int, message: str, kind: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind}}, status=status, headers=headers)


class FakeImagesServer:
    def __init__(self, settings: FakeServerSettings | None = None) -> None:
        self.settings = settings or FakeServerSettings()
        self.state = _State()
        self.url: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._slots: asyncio.Semaphore | None = None
        self._closing: asyncio.Event | None = None

    # --- handlers ---

    async def generations(self, request: web.Request) -> web.Response:
        if self.settings.require_key and request.headers.get("Authorization") != f"Bearer {self.settings.require_key}":
            return _error(401, "missing or wrong API key", "authentication_error")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "body is not JSON", "invalid_request_error")
        problem = self._check_body(body)
        if problem:
            return _error(400, problem, "invalid_request_error")
        self.state.bodies.append(body)
        if body["prompt"].startswith("!429"):
            return _error(429, "queue full", "overloaded", headers={"Retry-After": "2"})
        if body["prompt"].startswith("!500"):
            return _error(500, "model crashed", "server_error")
        if body["prompt"].startswith("!empty"):  # a 200 that breaks the contract
            return web.json_response({"created": 0, "data": []})
        self.state.requests += 1
        if self.settings.stop_answering_after is not None and self.state.requests > self.settings.stop_answering_after:
            await self._closing.wait()  # a server that stopped answering: the connection stays open, silent
            return _error(503, "shutting down", "unavailable")
        tenant = request.headers.get("X-Tenant-Id", "default")
        self.state.tenants[tenant] += 1
        started = time.monotonic()
        async with self._slots:
            self.state.in_flight += 1
            self.state.max_in_flight = max(self.state.max_in_flight, self.state.in_flight)
            try:
                hit, score, k = self._lookup(tenant, body["prompt"])
                await asyncio.sleep(self.settings.hit_latency_s if hit else self.settings.miss_latency_s)
            finally:
                self.state.in_flight -= 1
        if hit:
            self.state.hits += 1
        self.state.k_mix[str(k) if hit else "miss"] += 1
        image = base64.b64encode(b"\x89PNG fake image").decode()
        return web.json_response(
            {
                "created": int(time.time()),
                "data": [{"b64_json": image}],
                "modm": {
                    "hit": hit,
                    "score": score,
                    "k": k if hit else None,
                    "model": "small" if hit else "large",
                    "mode": "modm" if self.settings.cache else "vanilla",
                    "timings_s": {"total": time.monotonic() - started},
                    "request_id": f"req-{self.state.requests}",
                },
            }
        )

    def _check_body(self, body) -> str | None:
        if not isinstance(body, dict):
            return "body must be an object"
        if not isinstance(body.get("prompt"), str) or not body["prompt"].strip():
            return "prompt must be a non-empty string"
        if body.get("n", 1) != 1:
            return "only n=1 is supported"
        if not _SIZE.match(str(body.get("size", ""))):
            return f"bad size {body.get('size')!r}"
        if body.get("response_format") != "b64_json":
            return "response_format must be b64_json"
        return None

    def _lookup(self, tenant: str, prompt: str) -> tuple[bool, float | None, int | None]:
        words = _words(prompt)
        if not self.settings.cache:
            return False, None, None
        previous = self.state.prompts.setdefault(tenant, [])
        score = max((len(words & p) / max(1, len(words | p)) for p in previous), default=0.0)
        previous.append(words)
        for threshold, k in _K_TABLE:
            if score >= threshold:
                return True, score, k
        return False, score, None

    async def stats(self, request: web.Request) -> web.Response:
        requests = self.state.requests
        return web.json_response(
            {
                "requests": requests,
                "hits": self.state.hits,
                "hit_rate": self.state.hits / requests if requests else 0.0,
                "k_mix": dict(self.state.k_mix),
                "allocation": {"large": 1, "small": self.settings.replicas - 1},
                "queue_depths": {"large": 0, "small": 0, "in_flight": self.state.in_flight},
            }
        )

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    # --- lifecycle ---

    def start(self) -> FakeImagesServer:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            self._slots = asyncio.Semaphore(self.settings.replicas)
            self._closing = asyncio.Event()
            app = web.Application()
            app.router.add_post("/v1/images/generations", self.generations)
            app.router.add_get("/v1/stats", self.stats)
            app.router.add_get("/healthz", self.healthz)
            self._runner = web.AppRunner(app, shutdown_timeout=0.5)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            port = self._runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{port}"
            ready.set()

        def main() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=main, name="fake-images-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake images server did not start within 10 s")
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            self._closing.set()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
