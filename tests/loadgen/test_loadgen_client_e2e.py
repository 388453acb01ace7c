"""The client end to end against a fake server on 127.0.0.1: runs, partial runs, errors, the CLI."""

from __future__ import annotations

import json
import socket
import time

import pytest

from loadgen.client import StopReason, run_load
from loadgen.config import ClientConfig, RunConfig
from loadgen.runner import run
from modm.workload.config import ArrivalConfig, ArrivalKind, SessionConfig, TraceConfig
from modm.workload.records import Outcome
from modm.workload.runs import load_run
from modm.workload.trace import TraceRequest
from loadgen.cli import main

from trace_samples import DIFFUSIONDB_SAMPLE as SHARED_TSV


def client(url: str, **overrides) -> ClientConfig:
    settings = {"url": url, "progress": False, "request_timeout_s": 5.0, "stats_poll_period_s": 0.05}
    return ClientConfig(**{**settings, **overrides})


def test_open_loop_run_with_sessions_records_everything(make_server, tmp_path):
    server = make_server(miss_latency_s=0.04, hit_latency_s=0.01, replicas=2)
    vanilla = make_server(miss_latency_s=0.05, cache=False, replicas=1)
    config = RunConfig(
        name="modm",
        trace=TraceConfig(path=SHARED_TSV, n_requests=24, warm_up=4),
        sessions=SessionConfig(active_users=3, mean_edits=3.0),
        arrival=ArrivalConfig(kind=ArrivalKind.POISSON, rate_per_min=1200.0),
        client=client(server.url, tenant="team-a", steps=4),
        reference_url=vanilla.url,
        reference_probes=2,
        out_dir=tmp_path / "modm",
    )
    artifacts = run(config)
    records, summary = artifacts.result.records, artifacts.summary
    assert artifacts.result.stop_reason is StopReason.COMPLETED
    assert all(r.outcome is Outcome.OK for r in records) and len(records) == 28
    assert summary.n_requests == 24 and summary.n_ok == 24
    # Sessions repeat and edit prompts, so the word-overlap cache hits; hits are served by "small".
    assert summary.hit_rate > 0.3 and summary.model_mix["small"] > 0
    assert sum(summary.k_mix.values()) == 24
    # The reference is the vanilla server's one-at-a-time latency (0.05 s plus HTTP overhead).
    assert 0.05 <= artifacts.reference_latency_s < 0.5 and set(summary.slo_attainment) == {"2x", "4x"}
    for r in records:
        assert r.start_s >= r.arrival_s - 1e-3 and r.end_s > r.start_s
        assert r.latency_s == pytest.approx(r.end_s - r.arrival_s)
        assert r.request_id.startswith("req-") and r.tenant == "team-a" and r.session is not None
    assert server.state.tenants == {"team-a": 28}
    assert server.state.bodies[0] | {"prompt": ""} == {
        "prompt": "",
        "n": 1,
        "size": "256x256",
        "response_format": "b64_json",
        "seed": None,
        "steps": 4,
    }
    assert artifacts.result.stats and artifacts.result.stats[-1].requests == 28
    assert artifacts.result.stats[-1].large == 1

    stored = load_run(tmp_path / "modm")
    assert stored.records == records and stored.name == "modm"
    assert stored.metadata["reference_latency_s"] == artifacts.reference_latency_s
    assert stored.summarize() == summary
    for name in ("summary.json", "summary.txt", "stats.parquet", "latency_cdf.png", "timeline.png"):
        assert (tmp_path / "modm" / name).stat().st_size > 0


def test_closed_loop_keeps_concurrency(make_server):
    server = make_server(miss_latency_s=0.03, replicas=8, cache=False)
    trace = [TraceRequest(prompt=f"prompt {i}", source_row=i) for i in range(12)]
    result = run_load(trace, client(server.url, stats_poll_period_s=None), offsets_s=None, concurrency=3)
    assert all(r.outcome is Outcome.OK for r in result.records)
    assert server.state.max_in_flight == 3
    assert result.stats == []


def test_server_that_stops_answering_gives_a_partial_report(make_server, tmp_path):
    server = make_server(miss_latency_s=0.01, stop_answering_after=3)
    config = RunConfig(
        name="dying",
        trace=TraceConfig(path=SHARED_TSV, n_requests=40),
        arrival=ArrivalConfig(kind=ArrivalKind.POISSON, rate_per_min=3000.0),
        client=client(server.url, request_timeout_s=0.4, max_consecutive_failures=4),
        reference_latency_s=0.1,
        out_dir=tmp_path / "dying",
    )
    started = time.monotonic()
    artifacts = run(config)
    assert time.monotonic() - started < 5.0
    outcomes = [r.outcome for r in artifacts.result.records]
    assert artifacts.result.stop_reason is StopReason.SERVER_UNRESPONSIVE
    assert outcomes.count(Outcome.OK) == 3 and outcomes.count(Outcome.TIMEOUT) >= 4
    assert Outcome.NOT_SENT in outcomes  # sending stopped long before the 40th request
    summary = json.loads((tmp_path / "dying" / "summary.json").read_text())
    assert summary["n_ok"] == 3 and summary["stop_reason"] == "server-unresponsive"
    assert summary["slo_attainment"]["2x"] == pytest.approx(3 / 40)


def test_time_limit_cancels_in_flight_requests(make_server):
    server = make_server(miss_latency_s=30.0, replicas=4)
    trace = [TraceRequest(prompt=f"slow {i}", source_row=i) for i in range(6)]
    started = time.monotonic()
    result = run_load(trace, client(server.url, max_duration_s=0.5), offsets_s=[0.0, 0.01, 0.02, 0.03, 5.0, 6.0])
    assert time.monotonic() - started < 3.0
    assert result.stop_reason is StopReason.TIME_LIMIT
    assert [r.outcome for r in result.records] == [Outcome.CANCELLED] * 4 + [Outcome.NOT_SENT] * 2


def test_connection_refused_stops_after_consecutive_failures():
    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    trace = [TraceRequest(prompt=f"p {i}", source_row=i) for i in range(10)]
    result = run_load(
        trace,
        client(f"http://127.0.0.1:{port}", max_consecutive_failures=3, stats_poll_period_s=None),
        offsets_s=None,
        concurrency=1,
    )
    assert [r.outcome for r in result.records[:3]] == [Outcome.CONNECTION_ERROR] * 3
    assert result.stop_reason is StopReason.SERVER_UNRESPONSIVE
    assert all(r.outcome is Outcome.NOT_SENT for r in result.records[3:])


def test_http_errors_are_recorded_with_message_and_retry_after(make_server):
    server = make_server(require_key="s3cret")
    prompts = ["!429 busy", "!500 crash", "fine", "", "!empty"]
    trace = [TraceRequest(prompt=p, source_row=i) for i, p in enumerate(prompts)]
    result = run_load(trace, client(server.url, api_key="s3cret"), offsets_s=None)
    busy, crash, fine, empty, imageless = result.records
    assert imageless.outcome is Outcome.BAD_RESPONSE and "no b64_json image" in imageless.error
    assert (busy.outcome, busy.status, busy.retry_after_s) == (Outcome.HTTP_ERROR, 429, 2.0)
    assert crash.error == "HTTP 500: server_error: model crashed"
    assert fine.outcome is Outcome.OK and fine.hit is False and fine.model == "large"
    assert empty.status == 400 and "non-empty" in empty.error
    assert result.stop_reason is StopReason.COMPLETED  # answered errors do not mean the server is dead
    unauthorised = run_load(trace[2:3], client(server.url), offsets_s=None)
    assert unauthorised.records[0].status == 401


def test_cli_run_report_compare_sweep(make_server, tmp_path, capsys):
    modm = make_server(miss_latency_s=0.03, hit_latency_s=0.005)
    vanilla = make_server(miss_latency_s=0.03, cache=False)
    common = [
        "--trace",
        str(SHARED_TSV),
        "-n",
        "12",
        "--sessions",
        "--session-users",
        "2",
        "--no-progress",
        "--stats-period-s",
        "0.05",
        "--reference-latency-s",
        "0.03",
    ]
    assert (
        main(
            [
                "run",
                *common,
                "--url",
                modm.url,
                "--arrival",
                "closed-loop",
                "--concurrency",
                "2",
                "--out",
                str(tmp_path / "modm"),
                "--wait-ready-s",
                "5",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "run",
                *common,
                "--url",
                vanilla.url,
                "--arrival",
                "closed-loop",
                "--concurrency",
                "2",
                "--out",
                str(tmp_path / "vanilla"),
            ]
        )
        == 0
    )
    assert "run modm: 12/12 ok" in capsys.readouterr().out

    assert (
        main(
            [
                "report",
                str(tmp_path / "modm"),
                str(tmp_path / "vanilla"),
                "--plots-dir",
                str(tmp_path / "plots"),
                "--json",
                str(tmp_path / "summaries.json"),
            ]
        )
        == 0
    )
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {
        "latency_cdf.png",
        "timeline_modm.png",
        "timeline_vanilla.png",
    }
    assert (
        main(
            [
                "compare",
                str(tmp_path / "modm"),
                str(tmp_path / "vanilla"),
                "--baseline",
                "vanilla",
                "--json",
                str(tmp_path / "compare.json"),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "vanilla (base)" in table and "x base" in table
    rows = {r["name"]: r for r in json.loads((tmp_path / "compare.json").read_text())["rows"]}
    assert rows["vanilla"]["throughput_ratio"] == pytest.approx(1.0) and rows["vanilla"]["hit_rate"] == 0.0
    assert rows["modm"]["hit_rate"] > 0

    assert main(["sweep", *common, "--url", modm.url, "--rates", "600,1200", "--out", str(tmp_path / "sweep")]) == 0
    assert (tmp_path / "sweep" / "slo_vs_rate.png").exists() and (tmp_path / "sweep" / "rate_1200").is_dir()
    points = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["points"]
    assert [p["rate_per_min"] for p in points] == [600.0, 1200.0]
    # Each point is its own tenant, so the second point does not find the first one's prompts in the cache.
    assert {"sweep@600", "sweep@1200"} <= set(modm.state.tenants)
    assert points[1]["summary"]["hit_rate"] < 0.9

    assert (
        main(
            [
                "run",
                "--trace",
                str(tmp_path / "nope.tsv"),
                "--url",
                modm.url,
                "--out",
                str(tmp_path / "x"),
                "--rate",
                "5",
            ]
        )
        == 2
    )
    assert "nope.tsv: file not found" in capsys.readouterr().err
    assert main(["run", *common, "--url", modm.url, "--arrival", "ramp", "--out", str(tmp_path / "y")]) == 2
    assert "needs max_rate_per_min" in capsys.readouterr().err


def test_kept_images_are_written_and_recorded_relative_to_the_run(make_server, tmp_path):
    from loadgen.runner import run
    from modm.workload.config import ArrivalConfig, ArrivalKind, TraceConfig
    from modm.workload.records import read_records
    from modm.workload.runs import RECORDS_FILE

    server = make_server(miss_latency_s=0.01, replicas=2, cache=False)
    (tmp_path / "prompts.txt").write_text("".join(f"prompt number {i}\n" for i in range(4)))
    out = tmp_path / "run"
    run(
        RunConfig(
            name="kept",
            trace=TraceConfig(path=tmp_path / "prompts.txt", n_requests=4),
            arrival=ArrivalConfig(kind=ArrivalKind.CLOSED_LOOP, concurrency=2),
            client=client(server.url, stats_poll_period_s=None, image_dir=out / "images"),
            out_dir=out,
        )
    )
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i:06d}.png" for i in range(4)]
    records, _ = read_records(out / RECORDS_FILE)
    assert sorted(r.path for r in records) == [f"images/{i:06d}.png" for i in range(4)]
    assert all((out / r.path).read_bytes() for r in records)


def test_seed_from_row_gives_each_prompt_its_own_reproducible_seed():
    from loadgen.protocol import build_body

    config = client("http://127.0.0.1:1", seed_from_row=True)
    assert build_body(TraceRequest(prompt="a", source_row=7), config)["seed"] == 7
    assert (
        build_body(
            TraceRequest(prompt="a", source_row=7, seed=99), config.model_copy(update={"forward_trace_seed": True})
        )["seed"]
        == 99
    )
    assert build_body(TraceRequest(prompt="a", source_row=7), client("http://127.0.0.1:1"))["seed"] is None
