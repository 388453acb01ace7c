"""Report arithmetic on hand-made records, the comparison table, record files and plots."""

from __future__ import annotations

import dataclasses
import json

import pyarrow.parquet as pq
import pytest

from loadgen.server_stats import parse_stats

from modm.workload.compare import compare_runs, format_comparison
from modm.workload.records import Outcome, RequestRecord
from modm.workload.report import format_summary, summarize
from modm.workload.plots import plot_latency_cdf, plot_slo_vs_rate, plot_timeline
from modm.workload.records import (
    RECORD_SCHEMA,
    STATS_SCHEMA,
    StatsSample,
    read_records,
    read_stats,
    write_records,
    write_stats,
)


def rec(index, arrival, latency, outcome=Outcome.OK, hit=None, k=None, model=None, warm_up=False, error=None):
    end = None if latency is None else arrival + latency
    return RequestRecord(
        index=index,
        prompt=f"p{index}",
        source_row=index,
        arrival_s=arrival,
        start_s=arrival,
        end_s=end,
        latency_s=latency,
        outcome=outcome,
        hit=hit,
        k=k,
        model=model,
        warm_up=warm_up,
        status=200 if outcome is Outcome.OK else None,
        error=error,
    )


@pytest.fixture
def records():
    return [
        rec(0, 0.0, 50.0, warm_up=True, hit=False, model="large"),  # excluded everywhere
        rec(1, 10.0, 1.0, hit=False, model="large"),
        rec(2, 12.0, 2.0, hit=True, k=30, model="small"),
        rec(3, 14.0, 3.0, hit=True, k=5, model="small"),
        rec(4, 16.0, 6.0, hit=True, k=30, model="small"),
        rec(5, 18.0, 10.0, hit=False, model="large"),  # ends at 28.0: the makespan's end
        rec(6, 20.0, None, outcome=Outcome.TIMEOUT, error="no answer within 5 s"),
        rec(7, None, None, outcome=Outcome.NOT_SENT),
    ]


def test_summary_arithmetic(records):
    s = summarize(records, name="modm", reference_latency_s=2.0)
    assert (s.n_requests, s.n_ok) == (7, 5)
    assert s.outcomes == {"not-sent": 1, "ok": 5, "timeout": 1}
    assert s.makespan_s == pytest.approx(28.0 - 10.0)
    assert s.throughput_req_per_min == pytest.approx(5 / 18.0 * 60)
    assert s.offered_rate_req_per_min == pytest.approx(5 / 10.0 * 60)  # 6 arrivals over 10 s
    # OK latencies 1, 2, 3, 6, 10: linear-interpolated percentiles.
    assert (s.latency_p50_s, s.latency_mean_s) == (pytest.approx(3.0), pytest.approx(4.4))
    assert s.latency_p95_s == pytest.approx(6 + 0.8 * 4)
    assert s.latency_p99_s == pytest.approx(6 + 0.96 * 4)
    # 2x = 4 s: latencies 1, 2, 3 of 7 requests; 4x = 8 s: also 6. Failed and unsent requests are violations.
    assert s.slo_attainment == {"2x": pytest.approx(3 / 7), "4x": pytest.approx(4 / 7)}
    assert s.hit_rate == pytest.approx(3 / 5)
    assert s.k_mix == {"5": 1, "30": 2, "miss": 2}
    assert s.model_mix == {"large": 2, "small": 3}
    assert s.top_errors == ["1x no answer within 5 s"]
    text = format_summary(s)
    assert "16.67 req/min" in text and "2x 42.9%" in text and "hit rate        60.0%" in text


def test_summary_edge_cases():
    empty = summarize([], name="empty", reference_latency_s=1.0)
    assert empty.n_requests == 0 and empty.throughput_req_per_min is None and empty.slo_attainment == {}
    failed = summarize([rec(0, 0.0, None, outcome=Outcome.CONNECTION_ERROR, error="refused")], name="dead")
    assert failed.n_ok == 0 and failed.latency_p99_s is None and failed.hit_rate is None
    assert "0/1 ok" in format_summary(failed)
    with pytest.raises(ValueError, match="reference latency must be positive"):
        summarize([], reference_latency_s=0.0)


def test_comparison_ratios_against_baseline(records):
    modm = summarize(records, name="modm", reference_latency_s=2.0)
    vanilla_records = [
        dataclasses.replace(r, latency_s=r.latency_s * 2, end_s=r.arrival_s + r.latency_s * 2)
        if r.outcome is Outcome.OK
        else r
        for r in records
    ]
    vanilla = summarize(vanilla_records, name="vanilla", reference_latency_s=2.0)
    table = compare_runs([modm, vanilla], baseline="vanilla")
    row = {r.name: r for r in table.rows}
    expected = modm.throughput_req_per_min / vanilla.throughput_req_per_min
    assert row["modm"].throughput_ratio == pytest.approx(expected) and expected > 1
    assert row["vanilla"].throughput_ratio == pytest.approx(1.0)
    assert row["modm"].p99_ratio == pytest.approx(0.5)
    assert row["modm"].slo_ratio["2x"] == pytest.approx((3 / 7) / (2 / 7))
    text = format_comparison(table)
    assert "vanilla (base)" in text and f"{expected:.2f}" in text
    json.dumps(table.model_dump(mode="json"))
    with pytest.raises(ValueError, match="baseline 'nirvana' is not among"):
        compare_runs([modm, vanilla], baseline="nirvana")
    with pytest.raises(ValueError, match="unique"):
        compare_runs([modm, modm], baseline="modm")


def test_records_round_trip_with_metadata(tmp_path, records):
    assert [f.name for f in dataclasses.fields(RequestRecord)] == RECORD_SCHEMA.names
    path = write_records(tmp_path / "r.parquet", records, {"config": {"name": "x"}, "reference_latency_s": 2.0})
    back, metadata = read_records(path)
    assert back == records and metadata["reference_latency_s"] == 2.0
    samples = [
        StatsSample(
            t_s=1.0,
            requests=3,
            hits=1,
            hit_rate=1 / 3,
            large=1,
            small=1,
            k_mix_json='{"5": 1}',
            batching_json='{"large": {"max_batch_size": 4, "mean_batch_size": 2.5}}',
        )
    ]
    assert read_stats(write_stats(tmp_path / "s.parquet", samples)) == samples
    # A stats file from before the batching column reads with the column's default.
    old_columns = [name for name in STATS_SCHEMA.names if name != "batching_json"]
    pq.write_table(pq.read_table(tmp_path / "s.parquet").select(old_columns), tmp_path / "old.parquet")
    assert read_stats(tmp_path / "old.parquet") == [dataclasses.replace(samples[0], batching_json=None)]
    (tmp_path / "other.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match="not a records parquet file"):
        read_records(tmp_path / "other.parquet")


def test_stats_sample_keeps_the_batching_view_and_tolerates_its_absence():
    body = {
        "requests": 7,
        "allocation": {"large": 2, "small": 1},
        "batching": {"large": {"max_batch_size": 4, "mean_batch_size": 3.1}, "small": None},
    }
    sample = parse_stats(body, 5.0)
    assert (sample.requests, sample.large, sample.small) == (7, 2, 1)
    assert json.loads(sample.batching_json) == body["batching"]
    assert parse_stats({"requests": 1}, 0.0).batching_json is None  # a server that does not report it


def test_plots_write_pngs(tmp_path, records):
    samples = [StatsSample(t_s=t, large=2 if t < 10 else 1, small=0 if t < 10 else 1) for t in (0.0, 5.0, 15.0)]
    s = summarize(records, name="modm", reference_latency_s=2.0)
    paths = [
        plot_latency_cdf({"modm": records}, tmp_path / "cdf.png", reference_latency_s=2.0),
        plot_slo_vs_rate({"modm": [(2.0, s), (4.0, s)]}, tmp_path / "slo.png"),
        plot_timeline(records, samples, tmp_path / "timeline.png"),
        plot_timeline(records, [], tmp_path / "timeline_no_stats.png"),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
