"""Hundreds of malformed or hostile requests through real HTTP on the session app: never a 5xx, and every 4xx a
JSON body that gives a reason. Bodies come from hypothesis strategies (wrong types, huge numbers, odd unicode,
missing and unknown fields, non-JSON), plus giant bodies and bad headers."""

import json
from collections import Counter

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.ray

SENT: Counter = Counter()  # status code -> responses, over the whole module (printed at the end)

odd_text = st.text(st.characters(codec=None, categories=None), max_size=40) | st.sampled_from(
    [
        "../../etc/passwd",
        "/etc/shadow",
        "nul\x00byte",
        "\ud800 lone surrogate",
        "\u202e\u200b\ufeff",
        "名前 ✨",
        "%s%s%n",
        "' OR 1=1 --",
        "<script>alert(1)</script>",
        " ",
        "\n\t",
        "64x64\x00",
        "1e309",
    ]
)
json_leaf = (
    st.none() | st.booleans() | st.integers(-(2**80), 2**80) | st.floats(allow_nan=True, allow_infinity=True) | odd_text
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
FIELDS = ["prompt", "n", "size", "response_format", "seed", "steps", "model", "user"]
bodies = st.one_of(
    # the API's fields with values of any type, some missing, sometimes an unknown one
    st.fixed_dictionaries({}, optional={f: json_value for f in FIELDS}).flatmap(
        lambda d: st.just(d) | st.dictionaries(odd_text, json_value, min_size=1, max_size=2).map(lambda x: {**d, **x})
    ),
    # right types, hostile or out-of-range values
    st.fixed_dictionaries(
        {"prompt": odd_text},
        optional={
            "n": st.integers(-(2**70), 2**70),
            "size": st.from_regex(r"\A\d{0,6}x\d{0,6}\Z") | odd_text,
            "seed": st.integers(-(2**70), 2**70),
            "steps": st.integers(-(2**70), 2**70),
        },
    ),
    json_value,  # not an object at all
)
# Any value HTTP allows in a header (RFC 9110 field-value: visible ASCII, inner spaces, obs-text bytes); control
# bytes are refused by Serve's HTTP server itself (see test_illegal_http_gets_a_4xx_from_the_http_server).
header_values = (
    st.lists(st.integers(0x20, 0x7E) | st.integers(0x80, 0xFF), min_size=1, max_size=80)
    .map(bytes)
    .filter(lambda b: b.strip() == b)
)


def check(response: httpx.Response) -> None:
    SENT[response.status_code] += 1
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"], response.text
        assert isinstance(error["type"], str)


@settings(max_examples=220, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    body=bodies,
    tenant=st.none() | header_values,
    content_type=st.sampled_from(
        ["application/json", "application/json; charset=utf-8", "text/plain", "application/x-www-form-urlencoded", None]
    ),
)
def test_hostile_bodies_and_headers_never_get_a_5xx(client, body, tenant, content_type):
    if isinstance(body, dict) and "steps" not in body:
        body = {**body, "steps": 1}  # a body that happens to be valid costs one denoising step, not four
    headers = {} if content_type is None else {"Content-Type": content_type}
    if tenant is not None:
        headers["X-Tenant-Id"] = tenant
    # allow_nan: NaN/Infinity tokens; ensure_ascii: lone surrogates travel as \ud800 escapes
    content = json.dumps(body, allow_nan=True, ensure_ascii=True).encode()
    check(client.post("/v1/images/generations", content=content, headers=headers))


@given(raw=st.binary(max_size=300))
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_bytes_that_are_not_json_get_a_4xx(client, raw):
    check(client.post("/v1/images/generations", content=raw, headers={"Content-Type": "application/json"}))


@pytest.mark.parametrize(
    "prompt",
    [
        "\ud800 a lone surrogate",
        "nul\x00byte",
        "\u202e\u200b\ufeff",
        "🐱" * 500,
        "\U0010ffff" * 3,
        "../../etc/passwd",
        "a\r\nX-Injected: 1",
    ],
)
def test_well_typed_hostile_prompts_are_served_or_refused_with_a_reason(client, prompt):
    content = json.dumps({"prompt": prompt, "steps": 1}, ensure_ascii=True).encode()
    response = client.post("/v1/images/generations", content=content, headers={"Content-Type": "application/json"})
    check(response)
    if response.status_code == 200:
        assert "X-Injected" not in response.headers


def test_giant_bodies_get_413_before_being_read(client):
    giant = json.dumps({"prompt": "x" * (3 << 20)}).encode()
    response = client.post("/v1/images/generations", content=giant, headers={"Content-Type": "application/json"})
    check(response)
    assert response.status_code == 413 and "exceeds the limit" in response.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit applies while the body streams in
        yield b'{"prompt": "'
        for _ in range(48):
            yield b"y" * (64 << 10)
        yield b'"}'

    response = client.post("/v1/images/generations", content=chunks(), headers={"Content-Type": "application/json"})
    check(response)
    assert response.status_code == 413


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"X-Tenant-Id: a\x01b\r\n",
        b"X-Tenant-Id: a\x00b\r\n",
        b"Content-Length: abc\r\n",
        b"Content-Length: 5\r\nContent-Length: 7\r\n",
        b"Bad Header Name: x\r\n",
        b"\x80\xff: x\r\n",
    ],
)
def test_illegal_http_gets_a_4xx_from_the_http_server(serve_app, request_bytes):
    """Framing errors never reach the app: Serve's HTTP server (uvicorn/h11) answers them, in plain text."""
    import socket

    host, port = serve_app.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n" + request_bytes + b"\r\n{}")
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    status = int(status_line.split()[1])
    SENT[status] += 1
    assert 400 <= status < 500, status_line


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/v1/images/generations"),
        ("DELETE", "/v1/stats"),
        ("GET", "/nope"),
        ("POST", "/v1/images/generations/../../etc/passwd"),
    ],
)
def test_unknown_routes_and_methods_get_a_json_reason(client, method, path):
    check(client.request(method, path))


@pytest.mark.xdist_group("ray")  # on the worker whose tests filled SENT (this one needs no cluster itself)
def test_print_counts():
    """Last in the module: the totals for issue 7's closing note (pytest -s)."""
    print(f"\nadversarial requests: {sum(SENT.values())} sent, by status {dict(sorted(SENT.items()))}")
    assert sum(SENT.values()) >= 200 and not any(code >= 500 for code in SENT)
