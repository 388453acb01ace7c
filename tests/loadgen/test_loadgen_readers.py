"""Trace readers on small fixture files written by the tests, including malformed ones."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modm.workload.config import TraceConfig, TraceFormat
from modm.workload.errors import TraceFormatError
from modm.workload.readers import load_trace
from modm.workload.readers import read_diffusiondb_parquet, read_mjhq_json, read_prompt_lines, read_prompt_table

from trace_samples import DIFFUSIONDB_SAMPLE as SHARED_TSV

# DiffusionDB's metadata.parquet schema (poloclub/diffusiondb), column for column.
DIFFUSIONDB_SCHEMA = pa.schema(
    [
        ("image_name", pa.string()),
        ("prompt", pa.string()),
        ("part_id", pa.uint16()),
        ("seed", pa.uint32()),
        ("step", pa.uint16()),
        ("cfg", pa.float32()),
        ("sampler", pa.uint8()),
        ("width", pa.uint16()),
        ("height", pa.uint16()),
        ("user_name", pa.string()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("image_nsfw", pa.float32()),
        ("prompt_nsfw", pa.float32()),
    ]
)
T0 = datetime(2022, 8, 1, tzinfo=timezone.utc)
# File order is not time order: minutes after T0 for rows 0..9.
MINUTES = [9, 3, 7, 0, 5, 1, 8, 2, 6, 4]


def diffusiondb_rows(n: int = 10) -> list[dict]:
    return [
        {
            "image_name": f"{i}.webp",
            "prompt": f"prompt at minute {MINUTES[i]}",
            "part_id": 1,
            "seed": 1000 + i,
            "step": 50,
            "cfg": 7.0,
            "sampler": 8,
            "width": 512,
            "height": 512,
            "user_name": f"user{i % 3}",
            "timestamp": T0 + timedelta(minutes=MINUTES[i]),
            "image_nsfw": 0.1,
            "prompt_nsfw": 0.0,
        }
        for i in range(n)
    ]


@pytest.fixture
def diffusiondb_file(tmp_path):
    path = tmp_path / "metadata.parquet"
    pq.write_table(pa.Table.from_pylist(diffusiondb_rows(), schema=DIFFUSIONDB_SCHEMA), path)
    return path


def test_diffusiondb_sorts_by_timestamp_and_takes_the_modm_window(diffusiondb_file):
    # iloc[start - warm_up : start + n] of the time-sorted table = minutes 3..8, the first two warm-up.
    trace = read_diffusiondb_parquet(diffusiondb_file, 4, start_row=5, warm_up=2)
    assert [r.prompt for r in trace] == [f"prompt at minute {m}" for m in range(3, 9)]
    assert [r.warm_up for r in trace] == [True, True, False, False, False, False]
    first = trace[0]
    assert first.source_row == MINUTES.index(3)
    assert first.timestamp_s == (T0 + timedelta(minutes=3)).timestamp()
    assert (first.seed, first.steps, first.width, first.height) == (1000 + first.source_row, 50, 512, 512)
    assert first.user == f"user{first.source_row % 3}"


def test_diffusiondb_via_load_trace_and_default_start_row(diffusiondb_file):
    trace = load_trace(TraceConfig(path=diffusiondb_file, n_requests=3, start_row=0))
    assert [r.prompt for r in trace] == ["prompt at minute 0", "prompt at minute 1", "prompt at minute 2"]
    with pytest.raises(ValueError, match="file has 10 rows"):  # MoDM's default start row 50,000
        load_trace(TraceConfig(path=diffusiondb_file, n_requests=3))


def test_diffusiondb_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "no_ts.parquet"
    rows = [{k: v for k, v in r.items() if k != "timestamp"} for r in diffusiondb_rows()]
    pq.write_table(pa.Table.from_pylist(rows, schema=DIFFUSIONDB_SCHEMA.remove(10)), path)
    with pytest.raises(TraceFormatError, match="column 'timestamp'") as info:
        read_diffusiondb_parquet(path, 2, start_row=0)
    assert str(path) in str(info.value) and info.value.column == "timestamp"


def test_diffusiondb_null_and_unparseable_timestamps_name_the_row(tmp_path):
    rows = diffusiondb_rows()
    rows[6]["timestamp"] = None
    path = tmp_path / "null_ts.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=DIFFUSIONDB_SCHEMA), path)
    with pytest.raises(TraceFormatError, match="row 6, column 'timestamp'"):
        read_diffusiondb_parquet(path, 2, start_row=0)

    text_rows = [{**r, "timestamp": r["timestamp"].isoformat()} for r in diffusiondb_rows()]
    text_rows[4]["timestamp"] = "yesterday at noon"
    schema = DIFFUSIONDB_SCHEMA.set(10, pa.field("timestamp", pa.string()))
    path = tmp_path / "text_ts.parquet"
    pq.write_table(pa.Table.from_pylist(text_rows, schema=schema), path)
    with pytest.raises(TraceFormatError, match=r"row 4, column 'timestamp': bad timestamp 'yesterday at noon'"):
        read_diffusiondb_parquet(path, 2, start_row=0)


def test_diffusiondb_iso_string_timestamps_are_accepted(tmp_path):
    rows = [{**r, "timestamp": r["timestamp"].isoformat()} for r in diffusiondb_rows()]
    path = tmp_path / "text_ts.parquet"
    pq.write_table(
        pa.Table.from_pylist(rows, schema=DIFFUSIONDB_SCHEMA.set(10, pa.field("timestamp", pa.string()))), path
    )
    assert read_diffusiondb_parquet(path, 1, start_row=0)[0].prompt == "prompt at minute 0"


def test_diffusiondb_wrong_encoding_and_wrong_types(tmp_path):
    rows = diffusiondb_rows()
    binary_schema = DIFFUSIONDB_SCHEMA.set(1, pa.field("prompt", pa.binary()))
    for r in rows:
        r["prompt"] = r["prompt"].encode()
    rows[MINUTES.index(2)]["prompt"] = b"caf\xe9 latin-1"
    path = tmp_path / "latin1.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=binary_schema), path)
    assert read_diffusiondb_parquet(path, 2, start_row=0)[1].prompt == "prompt at minute 1"  # valid rows decode
    with pytest.raises(TraceFormatError, match=f"row {MINUTES.index(2)}, column 'prompt': not UTF-8"):
        read_diffusiondb_parquet(path, 3, start_row=0)

    int_ts = tmp_path / "int_ts.parquet"
    pq.write_table(pa.table({"prompt": ["a"], "timestamp": [1]}), int_ts)
    with pytest.raises(TraceFormatError, match="column 'timestamp': has type int64"):
        read_diffusiondb_parquet(int_ts, 1, start_row=0)

    not_parquet = tmp_path / "fake.parquet"
    not_parquet.write_text("prompt,timestamp\n")
    with pytest.raises(TraceFormatError, match="not a readable parquet file"):
        read_diffusiondb_parquet(not_parquet, 1, start_row=0)


@pytest.fixture
def mjhq_file(tmp_path):
    categories = ["animals", "art", "fashion", "food", "indoor", "landscape", "logo", "people", "plants", "vehicles"]
    data = {
        f"img{c:02d}{i}": {"category": name, "prompt": f"{name} {i}"}
        for c, name in enumerate(categories)
        for i in range(6)
    }
    path = tmp_path / "meta_data.json"
    path.write_text(json.dumps(data))
    return path


def test_mjhq_takes_the_tail_of_each_category_chunk(mjhq_file):
    trace = read_mjhq_json(mjhq_file, 20, warm_up=10)
    warm, measured = trace[:10], trace[10:]
    assert all(r.warm_up for r in warm) and not any(r.warm_up for r in measured)
    assert [r.prompt for r in measured[:4]] == ["animals 4", "animals 5", "art 4", "art 5"]
    assert [r.prompt for r in warm[:2]] == ["animals 3", "art 3"]
    assert measured[-1].prompt == "vehicles 5" and measured[-1].source_row == 59
    assert load_trace(TraceConfig(path=mjhq_file, n_requests=10))[0].prompt == "animals 5"


def test_mjhq_malformed(tmp_path, mjhq_file):
    with pytest.raises(ValueError, match="multiples of categories=10"):
        read_mjhq_json(mjhq_file, 15)
    with pytest.raises(ValueError, match="each of the 10 chunks has 6"):
        read_mjhq_json(mjhq_file, 70)
    data = json.loads(mjhq_file.read_text())
    data["img023"] = {"category": "art"}
    bad = tmp_path / "missing_prompt.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(TraceFormatError, match="row 15, column 'prompt': entry 'img023': missing"):
        read_mjhq_json(bad, 10)
    broken = tmp_path / "broken.json"
    broken.write_text('{"a": {"category": "x", "prompt": "y"},\n "b": ')
    with pytest.raises(TraceFormatError, match="line 2: invalid JSON"):
        read_mjhq_json(broken, 10)
    latin = tmp_path / "latin.json"
    latin.write_bytes('{"a": {"category": "x", "prompt": "caf'.encode() + b"\xe9" + b'"}}')
    with pytest.raises(TraceFormatError, match="line 1: not UTF-8"):
        read_mjhq_json(latin, 10)


def test_shared_diffusiondb_tsv_reads_all_prompts():
    trace = read_prompt_table(SHARED_TSV)
    assert len(trace) == 1_000
    assert trace[2].prompt == "a hybrid animal of a cat and a human"
    window = load_trace(TraceConfig(path=SHARED_TSV, n_requests=5, start_row=100, warm_up=2))
    assert [r.source_row for r in window] == list(range(98, 105))
    assert [r.warm_up for r in window] == [True, True, False, False, False, False, False]


def test_csv_with_quotes_timestamps_and_users(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text(
        'prompt,user_name,timestamp,seed\n"a cat, oil painting",ann,2022-08-01T00:00:00,7\n'
        '"a dog, ""sketch""",bob,2022-08-01T00:00:30+00:00,\n',
        encoding="utf-8",
    )
    trace = read_prompt_table(path)
    assert [r.prompt for r in trace] == ["a cat, oil painting", 'a dog, "sketch"']
    assert trace[1].timestamp_s - trace[0].timestamp_s == 30.0
    assert (trace[0].user, trace[0].seed, trace[1].seed) == ("ann", 7, None)


def test_table_malformed_inputs_name_file_row_and_column(tmp_path):
    missing = tmp_path / "missing.tsv"
    missing.write_text("text\tpart\nhello\t1\n")
    with pytest.raises(TraceFormatError, match="missing.tsv, line 1, column 'prompt': missing column"):
        read_prompt_table(missing)

    latin = tmp_path / "latin.tsv"
    latin.write_bytes("prompt\tir_id\tpart\nok one\t1\t1\nok two\t2\t1\n".encode() + b"caf\xe9\t3\t1\n")
    with pytest.raises(TraceFormatError) as info:
        read_prompt_table(latin)
    assert (info.value.row, info.value.line, info.value.column) == (2, 4, "prompt")
    assert "latin.tsv, row 2 (line 4), column 'prompt': not UTF-8" in str(info.value)

    latin_late_column = tmp_path / "latin2.tsv"
    latin_late_column.write_bytes(b"prompt\tir_id\tpart\nok\t1\t\xff\n")
    with pytest.raises(TraceFormatError, match="row 0 \\(line 2\\), column 'part'"):
        read_prompt_table(latin_late_column)

    short = tmp_path / "short.tsv"
    short.write_text("prompt\tir_id\tpart\na\t1\t1\nb\t2\n")
    with pytest.raises(TraceFormatError, match="row 1 \\(line 3\\), column 'part': 2 fields, header has 3"):
        read_prompt_table(short)

    bad_ts = tmp_path / "bad_ts.csv"
    bad_ts.write_text("prompt,timestamp\na,2022-08-01T00:00:00\nb,not a time\n")
    with pytest.raises(TraceFormatError, match="row 1 \\(line 3\\), column 'timestamp': bad timestamp"):
        read_prompt_table(bad_ts)

    bad_seed = tmp_path / "bad_seed.csv"
    bad_seed.write_text("prompt,seed\na,12x\n")
    with pytest.raises(TraceFormatError, match="row 0 \\(line 2\\), column 'seed': expected an integer"):
        read_prompt_table(bad_seed)

    with pytest.raises(TraceFormatError, match="file not found"):
        read_prompt_table(tmp_path / "nope.tsv")


def test_plain_prompt_lines_and_format_detection(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\ufeffa red fox\n\n  a blue whale  \nthe moon\n", encoding="utf-8")
    assert [r.prompt for r in read_prompt_lines(path)] == ["a red fox", "a blue whale", "the moon"]
    trace = load_trace(TraceConfig(path=path, n_requests=2, start_row=1))
    assert [r.prompt for r in trace] == ["a blue whale", "the moon"]
    assert load_trace(TraceConfig(path=path, format=TraceFormat.LINES, n_requests=1))[0].prompt == "a red fox"
    with pytest.raises(ValueError, match="the file has 3 prompts"):
        load_trace(TraceConfig(path=path, n_requests=3, start_row=1))
    warm = load_trace(TraceConfig(path=path, n_requests=1, warm_up=1))  # default start: right after the warm-up
    assert [(r.prompt, r.warm_up) for r in warm] == [("a red fox", True), ("a blue whale", False)]
    with pytest.raises(ValueError, match="reaches before row 0"):
        load_trace(TraceConfig(path=path, n_requests=1, warm_up=2, start_row=1))
