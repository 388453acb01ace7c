"""The load generator's configuration: one pydantic schema, documented field by field, unknown keys rejected.

Constructing a config never touches files or the network; cross-field rules live in ``model_validator``s.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from loadgen.constants import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_MAX_CONSECUTIVE_FAILURES,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MJHQ_CATEGORIES,
    DEFAULT_REFERENCE_PROBES,
    DEFAULT_REQUEST_TIMEOUT_S,
    DEFAULT_SEED,
    DEFAULT_STATS_POLL_PERIOD_S,
)

__all__ = [
    "ArrivalConfig",
    "ArrivalKind",
    "ClientConfig",
    "DEFAULT_MODIFIERS",
    "EditKind",
    "EditWeights",
    "RunConfig",
    "SessionConfig",
    "TraceConfig",
    "TraceFormat",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TraceFormat(str, Enum):
    AUTO = "auto"  # from the file suffix: .parquet, .json, .tsv/.csv, anything else = one prompt per line
    DIFFUSIONDB = "diffusiondb"  # DiffusionDB metadata.parquet
    MJHQ = "mjhq"  # MJHQ-30K meta_data.json
    TABLE = "table"  # TSV/CSV with a header and a prompt column
    LINES = "lines"  # plain text, one prompt per line


class ArrivalKind(str, Enum):
    REPLAY = "replay"  # the trace's own timestamps, divided by a speed factor
    POISSON = "poisson"  # homogeneous Poisson at a fixed rate (MoDM's SLO runs)
    RAMP = "ramp"  # MoDM's sigmoid ramp from a minimum to a maximum rate (Fig. 10)
    FLUCTUATING = "fluctuating"  # Poisson whose rate follows a sine wave (MoDM Fig. 17, generator not published)
    CLOSED_LOOP = "closed-loop"  # a fixed number of clients, each sending as soon as its last answer came back


class EditKind(str, Enum):
    """How the session model derives a user's next prompt from their previous one."""

    BASE = "base"  # the first prompt of a session, taken from the prompt list
    REPEAT = "repeat"  # the same prompt again (the user wants another sample)
    WORD_SWAP = "word-swap"  # one word replaced by a word from another prompt ("cat" -> "dog")
    ADD_MODIFIER = "add-modifier"  # a style modifier appended (", trending on artstation")
    DROP_CLAUSE = "drop-clause"  # the last comma-separated clause removed


class TraceConfig(_Strict):
    path: Path = Field(description="Trace file: DiffusionDB metadata.parquet, MJHQ meta_data.json, TSV/CSV or text.")
    format: TraceFormat = Field(TraceFormat.AUTO, description="File format; AUTO picks it from the suffix.")
    n_requests: int = Field(1000, gt=0, description="Requests to measure (after the warm-up ones).")
    warm_up: int = Field(0, ge=0, description="Requests sent before the measured ones and excluded from reports.")
    start_row: int | None = Field(
        None,
        ge=0,
        description="First measured row. None = the format's default: 50,000 for DiffusionDB (MoDM), else right "
        "after the warm-up rows. The warm-up rows are the `warm_up` rows just before it.",
    )
    prompt_column: str = Field("prompt", min_length=1, description="Prompt column of a TSV/CSV table.")
    mjhq_categories: int = Field(
        DEFAULT_MJHQ_CATEGORIES, gt=0, description="MJHQ: equal chunks the file is split into (MoDM: 10)."
    )


class EditWeights(_Strict):
    repeat: float = Field(0.25, ge=0, description="Relative weight of resubmitting the same prompt.")
    word_swap: float = Field(0.35, ge=0, description="Relative weight of replacing one word.")
    add_modifier: float = Field(0.30, ge=0, description="Relative weight of appending a style modifier.")
    drop_clause: float = Field(0.10, ge=0, description="Relative weight of removing the last clause.")

    @model_validator(mode="after")
    def _some_weight(self) -> EditWeights:
        if self.repeat + self.word_swap + self.add_modifier + self.drop_clause <= 0:
            raise ValueError("edit weights are all zero; at least one must be positive")
        return self


DEFAULT_MODIFIERS: tuple[str, ...] = (
    "highly detailed",
    "trending on artstation",
    "8k",
    "octane render",
    "concept art",
    "digital painting",
    "sharp focus",
    "cinematic lighting",
    "unreal engine",
    "by greg rutkowski",
    "matte painting",
    "4k",
    "studio lighting",
    "volumetric lighting",
    "photorealistic",
    "illustration",
)


class SessionConfig(_Strict):
    """Users who refine a prompt several times, interleaved with each other (for traces without timestamps).

    Each session takes the next base prompt of the list, then issues Geometric(mean = mean_edits) more requests,
    each an edit of the user's previous prompt. ``active_users`` sessions are open at a time and the next request
    comes from one of them, uniformly at random, so a session's requests sit within about ``active_users`` *
    (1 + mean_edits) requests of each other: that is the temporal locality a cache can exploit.
    """

    active_users: int = Field(8, ge=1, description="Sessions open at the same time (interleaving width).")
    mean_edits: float = Field(3.0, ge=0, description="Mean follow-up requests per session (geometric).")
    edit_weights: EditWeights = Field(default_factory=EditWeights, description="How follow-ups are derived.")
    modifiers: tuple[str, ...] = Field(DEFAULT_MODIFIERS, min_length=1, description="Modifiers to append.")


class ArrivalConfig(_Strict):
    kind: ArrivalKind = Field(ArrivalKind.POISSON, description="Arrival process.")
    speed: float = Field(1.0, gt=0, description="REPLAY: time compression factor (2 = twice as fast).")
    rate_per_min: float | None = Field(None, gt=0, description="POISSON rate / FLUCTUATING mean rate, req/min.")
    min_rate_per_min: float = Field(1.0, gt=0, description="RAMP: starting rate, req/min (MoDM: 1).")
    max_rate_per_min: float | None = Field(None, gt=0, description="RAMP: final rate, req/min.")
    amplitude: float = Field(0.5, ge=0, lt=1, description="FLUCTUATING: rate swings by +-amplitude * mean.")
    period_s: float = Field(600.0, gt=0, description="FLUCTUATING: period of the rate's sine wave, seconds.")
    concurrency: int = Field(1, ge=1, description="CLOSED_LOOP: clients sending back to back.")

    @model_validator(mode="after")
    def _parameters_for_kind(self) -> ArrivalConfig:
        if self.kind in (ArrivalKind.POISSON, ArrivalKind.FLUCTUATING) and self.rate_per_min is None:
            raise ValueError(f"arrival kind {self.kind.value!r} needs rate_per_min")
        if self.kind is ArrivalKind.RAMP:
            if self.max_rate_per_min is None:
                raise ValueError("arrival kind 'ramp' needs max_rate_per_min")
            if self.max_rate_per_min < self.min_rate_per_min:
                raise ValueError(
                    f"ramp max_rate_per_min={self.max_rate_per_min} is below min_rate_per_min={self.min_rate_per_min}"
                )
        return self


class ClientConfig(_Strict):
    url: str = Field(description="Base URL of the server, e.g. http://127.0.0.1:8000.")
    size: str = Field(DEFAULT_IMAGE_SIZE, pattern=r"^[1-9][0-9]*x[1-9][0-9]*$", description="Image size WxH.")
    steps: int | None = Field(None, gt=0, description="Steps to request; None = the server's default.")
    forward_trace_seed: bool = Field(False, description="Send the trace's seed column (DiffusionDB) as `seed`.")
    forward_trace_steps: bool = Field(False, description="Send the trace's step column (overrides `steps`).")
    seed_from_row: bool = Field(
        False,
        description="Send the request's trace row as `seed` when no trace seed is sent: a distinct seed per "
        "prompt, the same in every run (fair image comparisons across systems).",
    )
    tenant: str | None = Field(None, description="X-Tenant-Id header; None sends no header.")
    api_key: SecretStr | None = Field(None, description="Bearer key for the Authorization header.")
    request_timeout_s: float = Field(DEFAULT_REQUEST_TIMEOUT_S, gt=0, description="Per-request time limit.")
    connect_timeout_s: float = Field(DEFAULT_CONNECT_TIMEOUT_S, gt=0, description="TCP connect time limit.")
    max_in_flight: int = Field(DEFAULT_MAX_IN_FLIGHT, ge=1, description="Outstanding requests at most.")
    max_duration_s: float | None = Field(
        None, gt=0, description="Hard limit on the whole run; unfinished requests are recorded as cancelled."
    )
    max_consecutive_failures: int = Field(
        DEFAULT_MAX_CONSECUTIVE_FAILURES,
        ge=1,
        description="Timeouts/connection errors in a row after which the server is presumed dead and sending stops.",
    )
    stats_poll_period_s: float | None = Field(
        DEFAULT_STATS_POLL_PERIOD_S, gt=0, description="Poll GET /v1/stats this often; None disables polling."
    )
    progress: bool = Field(True, description="Show a tqdm progress bar.")
    image_dir: Path | None = Field(
        None,
        description="Keep each answered request's first image here as <index>.png (the records' `path` "
        "column, for quality metrics); None keeps no images.",
    )


class RunConfig(_Strict):
    name: str = Field("run", min_length=1, description="Run name, used in comparison tables.")
    trace: TraceConfig = Field(description="Where the prompts come from.")
    sessions: SessionConfig | None = Field(
        None, description="Impose the session model on the prompts (for traces without timestamps)."
    )
    arrival: ArrivalConfig = Field(default_factory=ArrivalConfig, description="When requests are sent.")
    client: ClientConfig = Field(description="Where and how requests are sent.")
    seed: int = Field(DEFAULT_SEED, ge=0, description="Global seed of the session model and arrival processes.")
    n_workers: int = Field(1, ge=1, description="Load-generator processes sharing this workload.")
    worker_id: int = Field(0, ge=0, description="This process's index among n_workers.")
    reference_latency_s: float | None = Field(
        None, gt=0, description="Standalone large-model latency for the SLOs; None = measure it (reference_url)."
    )
    reference_url: str | None = Field(
        None, description="Vanilla server to measure the reference latency on, one request at a time."
    )
    reference_probes: int = Field(DEFAULT_REFERENCE_PROBES, ge=1, description="Requests for that measurement.")
    out_dir: Path | None = Field(None, description="Where records.parquet, stats.parquet and summary.json go.")

    @model_validator(mode="after")
    def _worker_in_range(self) -> RunConfig:
        if self.worker_id >= self.n_workers:
            raise ValueError(f"worker_id={self.worker_id} must be below n_workers={self.n_workers}")
        return self
