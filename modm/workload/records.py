"""Per-request records and server-stats samples, and their parquet files.

A run writes ``records.parquet`` (one row per request, sent or not) with the run's metadata in the parquet
key-value metadata, and ``stats.parquet`` (one row per GET /v1/stats poll). Times are seconds since the run start.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "Outcome",
    "RECORD_SCHEMA",
    "RequestRecord",
    "STATS_SCHEMA",
    "StatsSample",
    "read_records",
    "read_stats",
    "write_records",
    "write_stats",
]

_METADATA_KEY = b"loadgen.run"
_LATER_COLUMNS = {"path", "entry_id", "tier"}


class Outcome(str, Enum):
    OK = "ok"  # 200 with an image
    HTTP_ERROR = "http-error"  # the server answered 4xx/5xx
    BAD_RESPONSE = "bad-response"  # 200 whose body does not follow the contract
    TIMEOUT = "timeout"  # no answer within the request timeout
    CONNECTION_ERROR = "connection-error"  # could not connect, or the connection dropped
    CANCELLED = "cancelled"  # in flight when the run hit its time limit
    NOT_SENT = "not-sent"  # never sent: run time limit reached or the server was presumed dead


@dataclass
class RequestRecord:
    index: int  # position in the workload (send order)
    prompt: str
    source_row: int
    tenant: str | None = None
    user: str | None = None
    session: str | None = None
    edit: str | None = None
    warm_up: bool = False
    arrival_s: float | None = None  # when the request was due (open loop) or released (closed loop)
    start_s: float | None = None  # when the HTTP request actually went out
    end_s: float | None = None
    latency_s: float | None = None  # end - arrival: includes client-side queueing, as MoDM's SLO does
    outcome: Outcome = Outcome.NOT_SENT
    status: int | None = None
    error: str | None = None
    retry_after_s: float | None = None
    request_id: str | None = None
    hit: bool | None = None
    score: float | None = None
    k: int | None = None
    model: str | None = None
    mode: str | None = None
    timings_json: str | None = None  # the server's modm.timings_s, as JSON text
    path: str | None = None  # the kept image (ClientConfig.image_dir), relative to the records file once written
    entry_id: int | None = None  # MoDM hit: the cache entry it was refined from (GET /v1/cache/{entry_id})
    tier: str | None = None  # the small-model tier that served it (small, small2, ...); None on the large model


RECORD_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("prompt", pa.string()),
        ("source_row", pa.int64()),
        ("tenant", pa.string()),
        ("user", pa.string()),
        ("session", pa.string()),
        ("edit", pa.string()),
        ("warm_up", pa.bool_()),
        ("arrival_s", pa.float64()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("latency_s", pa.float64()),
        ("outcome", pa.string()),
        ("status", pa.int32()),
        ("error", pa.string()),
        ("retry_after_s", pa.float64()),
        ("request_id", pa.string()),
        ("hit", pa.bool_()),
        ("score", pa.float64()),
        ("k", pa.int32()),
        ("model", pa.string()),
        ("mode", pa.string()),
        ("timings_json", pa.string()),
        ("path", pa.string()),
        ("entry_id", pa.int64()),
        ("tier", pa.string()),
    ]
)  # same names and order as RequestRecord's fields (tests/loadgen check it)


@dataclass
class StatsSample:
    t_s: float
    requests: int | None = None
    hits: int | None = None
    hit_rate: float | None = None
    large: int | None = None
    small: int | None = None
    k_mix_json: str | None = None
    queue_depths_json: str | None = None
    batching_json: str | None = None  # per model role: max and mean batch size, seconds per image-step by size


STATS_SCHEMA = pa.schema(
    [
        ("t_s", pa.float64()),
        ("requests", pa.int64()),
        ("hits", pa.int64()),
        ("hit_rate", pa.float64()),
        ("large", pa.int64()),
        ("small", pa.int64()),
        ("k_mix_json", pa.string()),
        ("queue_depths_json", pa.string()),
        ("batching_json", pa.string()),
    ]
)


def write_records(path: str | Path, records: list[RequestRecord], metadata: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    rows = [{**asdict(r), "outcome": r.outcome.value} for r in records]
    table = pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)
    if metadata is not None:
        table = table.replace_schema_metadata({_METADATA_KEY: json.dumps(metadata, default=str).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def read_records(path: str | Path) -> tuple[list[RequestRecord], dict[str, Any]]:
    """Records and the run metadata stored with them (empty dict if none)."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise ValueError(f"records file not found: {path}") from None
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{path}: not a records parquet file ({err})") from None
    missing = [name for name in RECORD_SCHEMA.names if name not in table.column_names]
    # Columns added later (images kept, cache entry ids) are absent from older runs' files.
    if set(missing) - _LATER_COLUMNS:
        raise ValueError(f"{path}: not a loadgen records file; missing columns {missing}")
    records = []
    for row in table.select([n for n in RECORD_SCHEMA.names if n in table.column_names]).to_pylist():
        row["outcome"] = Outcome(row["outcome"])
        records.append(RequestRecord(**row))
    raw = (table.schema.metadata or {}).get(_METADATA_KEY)
    return records, (json.loads(raw) if raw else {})


def write_stats(path: str | Path, samples: list[StatsSample]) -> Path:
    path = Path(path)
    rows = [{name: getattr(s, name) for name in STATS_SCHEMA.names} for s in samples]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=STATS_SCHEMA), path)
    return path


def read_stats(path: str | Path) -> list[StatsSample]:
    path = Path(path)
    if not path.exists():
        return []
    table = pq.read_table(path)
    # Files written before a column existed lack it; the sample's default stands in.
    names = [name for name in STATS_SCHEMA.names if name in table.schema.names]
    return [StatsSample(**row) for row in table.select(names).to_pylist()]
