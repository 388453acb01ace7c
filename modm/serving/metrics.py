"""Where the pipeline's measurements go: a sink protocol (Prometheus through Ray in `deployments.metrics`), and a
sink that keeps nothing, for in-process use and tests."""

from __future__ import annotations

from typing import Protocol

__all__ = ["NoMetrics", "ServingMetrics"]


class ServingMetrics(Protocol):
    def request_finished(self, decision: str, status: str, model: str | None, k: int, seconds: float | None) -> None:
        """One request's outcome: decision "hit"/"miss"/"none", status "ok"/"error"/"rejected"/"timeout"."""

    def in_flight(self, model: str, n: int) -> None: ...

    def retrieval_overhead(self, seconds: float) -> None:
        """Embedding + retrieval + decision time of one request."""

    def retrieval_failed(self) -> None: ...

    def admission_dropped(self) -> None: ...


class NoMetrics:
    def request_finished(self, decision: str, status: str, model: str | None, k: int, seconds: float | None) -> None:
        pass

    def in_flight(self, model: str, n: int) -> None:
        pass

    def retrieval_overhead(self, seconds: float) -> None:
        pass

    def retrieval_failed(self) -> None:
        pass

    def admission_dropped(self) -> None:
        pass
