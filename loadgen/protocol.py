"""The server's HTTP contract, client side: build one image request, send it, fill its record from the answer.

POST /v1/images/generations ``{"prompt", "n", "size", "response_format", "seed", "steps"}`` with optional
``X-Tenant-Id`` and ``Authorization: Bearer`` headers; 200 returns ``{"created", "data": [{"b64_json"}], "modm":
{hit, score, k, model, tier, mode, timings_s, request_id, entry_id}}``; GET /v1/cache/{entry_id} returns a cached
image (PNG); errors return ``{"error": {"message", "type"}}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from pathlib import Path
from typing import Any

import httpx

from loadgen.config import ClientConfig
from modm.workload.records import Outcome, RequestRecord
from modm.workload.trace import TraceRequest

__all__ = [
    "CACHE_IMAGE_PATH",
    "GENERATIONS_PATH",
    "HEALTH_PATH",
    "STATS_PATH",
    "build_body",
    "build_headers",
    "make_http_client",
    "send_one",
    "wait_until_ready",
]

GENERATIONS_PATH = "/v1/images/generations"
HEALTH_PATH = "/healthz"
STATS_PATH = "/v1/stats"
CACHE_IMAGE_PATH = "/v1/cache/{entry_id}"
_ERROR_TEXT_CHARS = 300


def make_http_client(config: ClientConfig, *, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    # trust_env=False: never route benchmark traffic through an HTTP(S)_PROXY from the environment.
    return httpx.AsyncClient(
        base_url=config.url,
        timeout=httpx.Timeout(config.request_timeout_s, connect=config.connect_timeout_s),
        limits=httpx.Limits(max_connections=config.max_in_flight, max_keepalive_connections=config.max_in_flight),
        transport=transport,
        trust_env=False,
    )


def build_body(request: TraceRequest, config: ClientConfig) -> dict[str, Any]:
    steps = request.steps if config.forward_trace_steps and request.steps is not None else config.steps
    seed = request.seed if config.forward_trace_seed else None
    if seed is None and config.seed_from_row:
        seed = request.source_row
    return {
        "prompt": request.prompt,
        "n": 1,
        "size": config.size,
        "response_format": "b64_json",
        "seed": seed,
        "steps": steps,
    }


def build_headers(config: ClientConfig) -> dict[str, str]:
    headers = {}
    if config.tenant is not None:
        headers["X-Tenant-Id"] = config.tenant
    if config.api_key is not None:
        headers["Authorization"] = f"Bearer {config.api_key.get_secret_value()}"
    return headers


async def send_one(
    http: httpx.AsyncClient, request: TraceRequest, record: RequestRecord, config: ClientConfig, clock
) -> RequestRecord:
    """Send ``request``, filling ``record`` in place (start, end, latency, outcome and the server's modm fields).

    ``clock()`` returns seconds since the run start. The whole exchange is bounded by ``request_timeout_s`` (httpx's
    own timeouts are per read, so a server trickling bytes could otherwise hold a request forever).
    """
    record.start_s = clock()
    try:
        response = await asyncio.wait_for(
            http.post(GENERATIONS_PATH, json=build_body(request, config), headers=build_headers(config)),
            timeout=config.request_timeout_s,
        )
        image_b64 = _fill_from_response(record, response)
        if image_b64 is not None and config.image_dir is not None:
            _keep_image(record, image_b64, config.image_dir)
    except (asyncio.TimeoutError, httpx.TimeoutException):
        record.outcome, record.error = Outcome.TIMEOUT, f"no answer within {config.request_timeout_s:g} s"
    except httpx.HTTPError as err:  # connect refused, connection reset, protocol errors
        record.outcome, record.error = Outcome.CONNECTION_ERROR, f"{type(err).__name__}: {err}"[:_ERROR_TEXT_CHARS]
    record.end_s = clock()
    if record.arrival_s is not None:
        record.latency_s = record.end_s - record.arrival_s
    return record


def _fill_from_response(record: RequestRecord, response: httpx.Response) -> str | None:
    """Fill ``record`` from the answer; returns the first image (base64) of a good one."""
    record.status = response.status_code
    if response.status_code != 200:
        record.outcome = Outcome.HTTP_ERROR
        record.error = _error_message(response)
        record.retry_after_s = _retry_after_s(response.headers.get("Retry-After"))
        return None
    try:
        body = response.json()
        images = body["data"]
        if not (isinstance(images, list) and images and isinstance(images[0].get("b64_json"), str)):
            raise ValueError("`data` holds no b64_json image")
        modm = body.get("modm") or {}
        record.request_id = _opt(modm.get("request_id"), str)
        record.hit = _opt(modm.get("hit"), bool)
        record.score = _opt(modm.get("score"), float)
        record.k = _opt(modm.get("k"), int)
        record.model = _opt(modm.get("model"), str)
        record.tier = _opt(modm.get("tier"), str)
        record.mode = _opt(modm.get("mode"), str)
        record.entry_id = _opt(modm.get("entry_id"), int)
        if modm.get("timings_s") is not None:
            record.timings_json = json.dumps(modm["timings_s"])
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        record.outcome, record.error = Outcome.BAD_RESPONSE, f"response breaks the contract: {err}"[:_ERROR_TEXT_CHARS]
        return None
    record.outcome = Outcome.OK
    return images[0]["b64_json"]


def _keep_image(record: RequestRecord, image_b64: str, image_dir: Path) -> None:
    """Write the image as <index>.png; an undecodable image makes the answer a contract breach."""
    try:
        data = base64.b64decode(image_b64, validate=True)
    except (binascii.Error, ValueError) as err:
        record.outcome, record.error = Outcome.BAD_RESPONSE, f"response breaks the contract: {err}"[:_ERROR_TEXT_CHARS]
        return
    image_dir.mkdir(parents=True, exist_ok=True)
    path = image_dir / f"{record.index:06d}.png"
    path.write_bytes(data)
    record.path = str(path)


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        text = f"{error.get('type', 'error')}: {error.get('message', '')}"
    except (ValueError, KeyError, TypeError, AttributeError):
        text = response.text
    return f"HTTP {response.status_code}: {text}"[:_ERROR_TEXT_CHARS]


def _retry_after_s(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:  # an HTTP date; the seconds form is what our server sends
        return None


def _opt(value, cast):
    if value is None:
        return None
    if cast is bool and not isinstance(value, bool):
        raise TypeError(f"expected a boolean, got {value!r}")
    return cast(value)


async def wait_until_ready(
    config: ClientConfig,
    timeout_s: float,
    *,
    poll_period_s: float = 0.5,
    transport: httpx.AsyncBaseTransport | None = None,
) -> None:
    """Poll GET /healthz until it answers 200; ``TimeoutError`` naming the URL after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    async with make_http_client(config, transport=transport) as http:
        while time.monotonic() < deadline:
            try:
                response = await http.get(HEALTH_PATH, timeout=min(poll_period_s * 4, timeout_s))
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}"
            except httpx.HTTPError as err:
                last = type(err).__name__
            await asyncio.sleep(poll_period_s)
    raise TimeoutError(f"{config.url}{HEALTH_PATH} not ready after {timeout_s:g} s (last: {last})")
