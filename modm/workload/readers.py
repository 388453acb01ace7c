"""Trace readers: DiffusionDB metadata.parquet, MJHQ-30K meta_data.json, TSV/CSV tables and plain prompt lists.

Every reader returns ``list[TraceRequest]`` in send order, warm-up rows first, and raises ``TraceFormatError``
naming the file, row and column for malformed input (missing column, bad timestamp, bad encoding).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from modm.workload.config import TraceConfig, TraceFormat
from modm.workload.constants import DEFAULT_DIFFUSIONDB_START_ROW
from modm.workload.errors import TraceFormatError
from modm.workload.trace import TraceRequest

__all__ = [
    "detect_format",
    "load_trace",
    "read_diffusiondb_parquet",
    "read_mjhq_json",
    "read_prompt_lines",
    "read_prompt_table",
]

# DiffusionDB columns the load generator uses; everything else in the file (cfg, sampler, nsfw scores) is ignored.
_DIFFUSIONDB_REQUIRED = ("prompt", "timestamp")
_DIFFUSIONDB_OPTIONAL = ("user_name", "seed", "step", "width", "height")


def detect_format(path: str | Path) -> TraceFormat:
    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        return TraceFormat.DIFFUSIONDB
    if suffix == ".json":
        return TraceFormat.MJHQ
    if suffix in (".tsv", ".csv"):
        return TraceFormat.TABLE
    return TraceFormat.LINES


def load_trace(config: TraceConfig) -> list[TraceRequest]:
    """Read the requests ``config`` selects: ``warm_up`` rows before ``start_row``, then ``n_requests`` rows."""
    fmt = detect_format(config.path) if config.format is TraceFormat.AUTO else config.format
    if fmt is TraceFormat.DIFFUSIONDB:
        start = DEFAULT_DIFFUSIONDB_START_ROW if config.start_row is None else config.start_row
        return read_diffusiondb_parquet(config.path, config.n_requests, start_row=start, warm_up=config.warm_up)
    if fmt is TraceFormat.MJHQ:
        if config.start_row not in (None, 0):
            raise ValueError(f"MJHQ traces take the tail of each category; start_row={config.start_row} is not used")
        return read_mjhq_json(config.path, config.n_requests, warm_up=config.warm_up, categories=config.mjhq_categories)
    start = config.warm_up if config.start_row is None else config.start_row
    if fmt is TraceFormat.TABLE:
        rows = read_prompt_table(config.path, prompt_column=config.prompt_column)
    else:
        rows = read_prompt_lines(config.path)
    return _window(rows, config.path, start, config.n_requests, config.warm_up)


# --- DiffusionDB ------------------------------------------------------------------------------------------------


def read_diffusiondb_parquet(
    path: str | Path, n_requests: int, *, start_row: int = DEFAULT_DIFFUSIONDB_START_ROW, warm_up: int = 0
) -> list[TraceRequest]:
    """MoDM's selection: sort by timestamp, take ``iloc[start_row - warm_up : start_row + n_requests]``."""
    path = Path(path)
    try:
        schema = pq.read_schema(path)
    except FileNotFoundError:
        raise TraceFormatError(path, "file not found") from None
    except (pa.ArrowException, OSError) as err:
        raise TraceFormatError(path, f"not a readable parquet file ({err})") from None
    for column in _DIFFUSIONDB_REQUIRED:
        if column not in schema.names:
            raise TraceFormatError(path, f"missing column (the file has {schema.names})", column=column)
    columns = [*_DIFFUSIONDB_REQUIRED, *(c for c in _DIFFUSIONDB_OPTIONAL if c in schema.names)]
    try:
        table = pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as err:
        raise TraceFormatError(path, f"cannot read columns {columns} ({err})") from None

    seconds = _timestamps_to_seconds(table.column("timestamp"), path)
    table = table.set_column(table.schema.get_field_index("timestamp"), "timestamp", seconds)
    table = table.append_column("source_row", pa.array(range(table.num_rows), pa.int64()))
    first = start_row - warm_up
    if first < 0:
        raise ValueError(f"{path}: warm_up={warm_up} reaches before row 0 (start_row={start_row})")
    if start_row + n_requests > table.num_rows:
        raise ValueError(
            f"{path}: rows {first}..{start_row + n_requests} requested but the file has {table.num_rows} rows "
            f"(lower start_row or n_requests)"
        )
    # Arrow's sort is stable, so requests with equal timestamps keep their file order.
    order = pc.sort_indices(table, sort_keys=[("timestamp", "ascending")])
    window = table.take(order[first : start_row + n_requests])

    prompts = _utf8_column(window, "prompt", path)
    columns_py = {name: window.column(name).to_pylist() for name in window.column_names if name != "prompt"}
    requests = []
    for i, prompt in enumerate(prompts):
        requests.append(
            TraceRequest(
                prompt=prompt,
                source_row=columns_py["source_row"][i],
                timestamp_s=columns_py["timestamp"][i],
                user=_optional_str(columns_py.get("user_name"), i),
                seed=_optional_int(columns_py.get("seed"), i),
                steps=_optional_int(columns_py.get("step"), i),
                width=_optional_int(columns_py.get("width"), i),
                height=_optional_int(columns_py.get("height"), i),
                warm_up=i < warm_up,
            )
        )
    return requests


def _timestamps_to_seconds(column: pa.ChunkedArray, path: Path) -> pa.Array:
    """Seconds since the epoch as float64. Accepts Arrow timestamps (any unit/zone) or ISO-8601 strings."""
    if pa.types.is_timestamp(column.type):
        nulls = pc.is_null(column)
        if pc.any(nulls).as_py():
            row = pc.index(nulls, True).as_py()
            raise TraceFormatError(path, "timestamp is null", row=row, column="timestamp")
        micros = pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.int64())
        return pc.divide(pc.cast(micros, pa.float64()), 1e6).combine_chunks()
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return pa.array([_parse_iso_timestamp(v, path, row) for row, v in enumerate(column.to_pylist())], pa.float64())
    raise TraceFormatError(
        path, f"has type {column.type}; expected a timestamp or ISO-8601 strings", column="timestamp"
    )


def _parse_iso_timestamp(value: str | None, path: Path, row: int, line: int | None = None) -> float:
    if value is None or not value.strip():
        raise TraceFormatError(path, "timestamp is empty", row=row, column="timestamp", line=line)
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise TraceFormatError(
            path, f"bad timestamp {value!r} (expected ISO 8601)", row=row, column="timestamp", line=line
        ) from None
    if parsed.tzinfo is None:  # DiffusionDB's timestamps are UTC
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _utf8_column(table: pa.Table, name: str, path: Path) -> list[str]:
    """The column as Python strings; binary columns are decoded as UTF-8 and nulls are rejected, naming the row."""
    values = table.column(name).to_pylist()
    rows = table.column("source_row").to_pylist()
    out = []
    for value, row in zip(values, rows):
        if value is None:
            raise TraceFormatError(path, "prompt is null", row=row, column=name)
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as err:
                raise TraceFormatError(
                    path, f"not UTF-8 ({err.reason} at byte {err.start})", row=row, column=name
                ) from None
        elif not isinstance(value, str):
            raise TraceFormatError(path, f"expected text, got {type(value).__name__}", row=row, column=name)
        out.append(value)
    return out


def _optional_int(values: list | None, i: int) -> int | None:
    return None if values is None or values[i] is None else int(values[i])


def _optional_str(values: list | None, i: int) -> str | None:
    return None if values is None or values[i] is None else str(values[i])


# --- MJHQ-30K ---------------------------------------------------------------------------------------------------


def read_mjhq_json(path: str | Path, n_requests: int, *, warm_up: int = 0, categories: int = 10) -> list[TraceRequest]:
    """MoDM's selection: split the file (in its order) into ``categories`` equal chunks and take the last
    ``n_requests / categories`` prompts of each, chunk after chunk; warm-up prompts are the ones just before those.
    """
    path = Path(path)
    if n_requests % categories or warm_up % categories:
        raise ValueError(
            f"{path}: n_requests={n_requests} and warm_up={warm_up} must be multiples of categories={categories}"
        )
    data = _load_json(path)
    if not isinstance(data, dict):
        raise TraceFormatError(
            path, f"expected an object of image_id -> {{category, prompt}}, got {type(data).__name__}"
        )
    entries = []
    for row, (image_id, entry) in enumerate(data.items()):
        if not isinstance(entry, dict):
            raise TraceFormatError(path, f"entry {image_id!r} is {type(entry).__name__}, expected an object", row=row)
        for column in ("prompt", "category"):
            value = entry.get(column)
            if not isinstance(value, str):
                problem = "missing" if value is None else f"expected a string, got {type(value).__name__}"
                raise TraceFormatError(path, f"entry {image_id!r}: {problem}", row=row, column=column)
        entries.append((row, image_id, entry["prompt"]))
    chunk = len(entries) // categories
    per_chunk, warm_per_chunk = n_requests // categories, warm_up // categories
    if per_chunk + warm_per_chunk > chunk:
        raise ValueError(
            f"{path}: {per_chunk + warm_per_chunk} prompts per category requested but each of the {categories} "
            f"chunks has {chunk} ({len(entries)} entries)"
        )
    warm, measured = [], []
    for c in range(categories):
        end = (c + 1) * chunk
        for row, image_id, prompt in entries[end - per_chunk - warm_per_chunk : end - per_chunk]:
            warm.append(TraceRequest(prompt=prompt, source_row=row, warm_up=True))
        for row, image_id, prompt in entries[end - per_chunk : end]:
            measured.append(TraceRequest(prompt=prompt, source_row=row))
    return warm + measured


def _load_json(path: Path):
    raw = _read_bytes(path)
    text = _decode_utf8(raw, path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise TraceFormatError(path, f"invalid JSON: {err.msg} (column {err.colno})", line=err.lineno) from None


# --- TSV/CSV and plain text -------------------------------------------------------------------------------------


def read_prompt_table(path: str | Path, *, prompt_column: str = "prompt") -> list[TraceRequest]:
    """A TSV (``.tsv``, or any file whose header has a tab) or CSV with a header row.

    Optional columns used when present: ``timestamp`` (ISO 8601, makes the table replayable), ``user_name``,
    ``seed``, ``step``.
    """
    path = Path(path)
    raw = _read_bytes(path)
    header_bytes = raw.split(b"\n", 1)[0]
    delimiter = "\t" if path.suffix.lower() == ".tsv" or b"\t" in header_bytes else ","
    text = _decode_utf8(raw, path, delimiter=delimiter)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise TraceFormatError(path, "empty file (expected a header row)", line=1) from None
    except csv.Error as err:
        raise TraceFormatError(path, f"unreadable header: {err}", line=1) from None
    if prompt_column not in header:
        raise TraceFormatError(path, f"missing column (the header has {header})", column=prompt_column, line=1)
    index = {name: header.index(name) for name in header}
    requests = []
    row = -1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise TraceFormatError(path, f"unparseable row: {err}", row=row + 1, line=reader.line_num) from None
        if not fields:  # blank line
            continue
        row += 1
        line = reader.line_num
        if len(fields) != len(header):
            raise TraceFormatError(
                path,
                f"{len(fields)} fields, header has {len(header)}",
                row=row,
                line=line,
                column=header[min(len(fields), len(header) - 1)],
            )
        timestamp = None
        if "timestamp" in index:
            timestamp = _parse_iso_timestamp(fields[index["timestamp"]], path, row, line)
        requests.append(
            TraceRequest(
                prompt=fields[index[prompt_column]],
                source_row=row,
                timestamp_s=timestamp,
                user=fields[index["user_name"]] if "user_name" in index else None,
                seed=_table_int(fields, index, "seed", path, row, line),
                steps=_table_int(fields, index, "step", path, row, line),
            )
        )
    return requests


def _table_int(fields: list[str], index: dict[str, int], column: str, path: Path, row: int, line: int) -> int | None:
    if column not in index or fields[index[column]] == "":
        return None
    try:
        return int(fields[index[column]])
    except ValueError:
        raise TraceFormatError(
            path, f"expected an integer, got {fields[index[column]]!r}", row=row, column=column, line=line
        ) from None


def read_prompt_lines(path: str | Path) -> list[TraceRequest]:
    """Plain text, one prompt per line; blank lines are skipped (``source_row`` counts prompts, not lines)."""
    path = Path(path)
    text = _decode_utf8(_read_bytes(path), path)
    lines = (line.strip() for line in text.splitlines())
    return [TraceRequest(prompt=p, source_row=row) for row, p in enumerate(p for p in lines if p)]


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TraceFormatError(path, "file not found") from None
    except OSError as err:
        raise TraceFormatError(path, f"cannot read ({err.strerror})") from None


def _decode_utf8(raw: bytes, path: Path, *, delimiter: str | None = None) -> str:
    """Strict UTF-8. On failure name the line and, for a table (``delimiter`` given), its data row and column."""
    try:
        return raw.decode("utf-8-sig")  # tolerate a byte-order mark, which spreadsheet exports add
    except UnicodeDecodeError as err:
        line_start = raw.rfind(b"\n", 0, err.start) + 1
        line = raw[: err.start].count(b"\n") + 1
        message = (
            f"not UTF-8 ({err.reason}: byte 0x{raw[err.start]:02x} at byte {err.start - line_start + 1} of the line)"
        )
        row = column = None
        if delimiter is not None and line > 1:
            header = raw.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace").rstrip("\r").split(delimiter)
            field = raw[line_start : err.start].count(delimiter.encode())
            row, column = line - 2, header[min(field, len(header) - 1)]
        raise TraceFormatError(path, message, row=row, column=column, line=line) from None


def _window(rows: list[TraceRequest], path: Path, start: int, n: int, warm_up: int) -> list[TraceRequest]:
    first = start - warm_up
    if first < 0:
        raise ValueError(f"{path}: warm_up={warm_up} reaches before row 0 (start_row={start})")
    if start + n > len(rows):
        raise ValueError(f"{path}: rows {first}..{start + n} requested but the file has {len(rows)} prompts")
    selected = rows[first : start + n]
    return [replace(r, warm_up=i < warm_up) for i, r in enumerate(selected)]
