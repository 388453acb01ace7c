"""The unit a trace reader produces: one prompt to send, with whatever the source file says about it."""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["TraceRequest", "with_prompt"]


@dataclass(frozen=True)
class TraceRequest:
    """One request of a workload, before an arrival process gives it a send time.

    ``timestamp_s`` is seconds since the Unix epoch when the source has real timestamps (DiffusionDB), else None.
    ``source_row`` is the 0-based row in the source file, so a record can always be traced back to its input.
    """

    prompt: str
    source_row: int
    timestamp_s: float | None = None
    user: str | None = None
    session: str | None = None
    edit: str | None = None  # how the session model derived this prompt ("base", "repeat", ...); None if real
    seed: int | None = None
    steps: int | None = None
    width: int | None = None
    height: int | None = None
    warm_up: bool = False  # warm-up requests are sent but excluded from the report


def with_prompt(request: TraceRequest, prompt: str, **changes) -> TraceRequest:
    """A copy of ``request`` with a new prompt (and any other field changes)."""
    return replace(request, prompt=prompt, **changes)
