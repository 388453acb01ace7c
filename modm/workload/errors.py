"""Errors raised on bad traces: each names the file, the row and the column at fault."""

from __future__ import annotations

from pathlib import Path

__all__ = ["TraceFormatError"]


class TraceFormatError(ValueError):
    """A trace file that cannot be read as the expected format.

    ``row`` is the 0-based data row in file order (header excluded); text formats also give the 1-based ``line``.
    """

    def __init__(
        self,
        path: str | Path,
        message: str,
        *,
        row: int | None = None,
        column: str | None = None,
        line: int | None = None,
    ) -> None:
        self.path = str(path)
        self.row = row
        self.column = column
        self.line = line
        self.reason = message
        where = [self.path]
        if row is not None:
            where.append(f"row {row}" + (f" (line {line})" if line is not None else ""))
        elif line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {message}")
