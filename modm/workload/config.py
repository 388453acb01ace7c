"""A workload's configuration: where the prompts come from, the session model, the arrival process and the seed.

Shared by the load generator (whose RunConfig adds where and how requests are sent) and the simulator, so a
simulated and a measured run of one config see the same requests at the same offsets. One pydantic schema,
documented field by field, unknown keys rejected; constructing a config never touches files or the network.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from modm.workload.constants import DEFAULT_MJHQ_CATEGORIES, DEFAULT_SEED

__all__ = [
    "ArrivalConfig",
    "ArrivalKind",
    "DEFAULT_MODIFIERS",
    "EditKind",
    "EditWeights",
    "SessionConfig",
    "Strict",
    "TraceConfig",
    "TraceFormat",
    "WorkloadConfig",
]


class Strict(BaseModel):
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


class TraceConfig(Strict):
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


class EditWeights(Strict):
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


class SessionConfig(Strict):
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


class ArrivalConfig(Strict):
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


class WorkloadConfig(Strict):
    """The requests one worker sends and when: a pure function of this config and the trace file."""

    name: str = Field("run", min_length=1, description="Run name, used in comparison tables.")
    trace: TraceConfig = Field(description="Where the prompts come from.")
    sessions: SessionConfig | None = Field(
        None, description="Impose the session model on the prompts (for traces without timestamps)."
    )
    arrival: ArrivalConfig = Field(default_factory=ArrivalConfig, description="When requests are sent.")
    seed: int = Field(DEFAULT_SEED, ge=0, description="Global seed of the session model and arrival processes.")
    n_workers: int = Field(1, ge=1, description="Load-generator processes sharing this workload.")
    worker_id: int = Field(0, ge=0, description="This process's index among n_workers.")

    @model_validator(mode="after")
    def _worker_in_range(self) -> WorkloadConfig:
        if self.worker_id >= self.n_workers:
            raise ValueError(f"worker_id={self.worker_id} must be below n_workers={self.n_workers}")
        return self

    @classmethod
    def from_run_config(cls, stored: dict) -> WorkloadConfig:
        """The workload part of a stored run config (a loadgen RunConfig dumped to JSON); the rest is ignored."""
        return cls.model_validate({key: stored[key] for key in cls.model_fields if key in stored})
