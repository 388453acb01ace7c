"""The quality table: one row per group (all, then each requested breakdown), printed and as JSON.

Per-image metrics (CLIPScore, PickScore) are averaged over the group's images. The Inception Score is computed on
the group's images with the requested number of splits; a group with fewer images than splits gets no IS (`None`,
with the reason in `note`) rather than a number from a different recipe. A breakdown is left out when no image
carries its field (a plain folder has no hit or k).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from modm.quality.errors import QualityInputError
from modm.quality.evaluate import ImageSetScores
from modm.quality.grouping import ALL, UNKNOWN, GroupBy, group_indices
from modm.quality.inception_score import DEFAULT_IS_SPLITS, inception_score

__all__ = ["GroupRow", "format_table", "summarise", "write_json", "write_per_image"]


@dataclass
class GroupRow:
    group_by: str  # "all", "system", "hit" or "k"
    group: str
    n: int
    means: dict[str, float] = field(default_factory=dict)  # metric -> mean over the group
    stds: dict[str, float] = field(default_factory=dict)  # metric -> population std over the group
    inception_score: float | None = None
    inception_score_std: float | None = None
    note: str = ""


def _row(scores: ImageSetScores, indices: list[int], group_by: str, group: str, is_splits: int) -> GroupRow:
    row = GroupRow(group_by=group_by, group=group, n=len(indices))
    for name, values in scores.per_image.items():
        row.means[name] = float(values[indices].mean())
        row.stds[name] = float(values[indices].std())
    if scores.logits is not None:
        if len(indices) < is_splits:
            row.note = f"no IS: {len(indices)} images < {is_splits} splits"
        else:
            result = inception_score(scores.logits[indices], is_splits)
            row.inception_score, row.inception_score_std = result.mean, result.std
    return row


def summarise(
    scores: ImageSetScores, group_by: Sequence[GroupBy] = (), *, is_splits: int = DEFAULT_IS_SPLITS
) -> list[GroupRow]:
    if is_splits < 1:
        raise QualityInputError(f"is_splits={is_splits} must be at least 1")
    rows = [_row(scores, list(range(len(scores.entries))), ALL, ALL, is_splits)]
    for by in dict.fromkeys(GroupBy(b) for b in group_by):
        groups = group_indices(scores.entries, by)
        if list(groups) == [UNKNOWN]:
            continue  # no image carries this field (e.g. hit/k for a plain folder): the breakdown says nothing
        for label, indices in groups.items():
            rows.append(_row(scores, indices, by.value, label, is_splits))
    return rows


_TITLES = {"clip": "CLIPScore", "pick": "PickScore"}


def format_table(rows: Sequence[GroupRow]) -> str:
    metrics = list(rows[0].means) if rows else []
    has_is = any(r.inception_score is not None or r.note for r in rows)
    header = ["group", "n"] + [_TITLES.get(m, m) for m in metrics] + (["IS"] if has_is else [])
    lines = []
    for r in rows:
        cells = [f"{r.group_by}={r.group}" if r.group_by != ALL else ALL, str(r.n)]
        cells += [f"{r.means[m]:.2f} ± {r.stds[m]:.2f}" for m in metrics]
        if has_is:
            cells.append("-" if r.inception_score is None else f"{r.inception_score:.3f} ± {r.inception_score_std:.3f}")
        lines.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)) for cells in lines]
    notes = [f"{r.group_by}={r.group}: {r.note}" for r in rows if r.note]
    return "\n".join(out + notes)


def write_json(path: str | Path, rows: Sequence[GroupRow], metadata: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**metadata, "groups": [asdict(r) for r in rows]}, indent=2), encoding="utf-8")
    return path


def write_per_image(path: str | Path, scores: ImageSetScores) -> Path:
    """One row per image (path, prompt, system, hit, k and each metric) as parquet, e.g. for calibration."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    columns = {
        "path": [str(e.path) for e in scores.entries],
        "prompt": [e.prompt for e in scores.entries],
        "system": [e.system for e in scores.entries],
        "hit": [e.hit for e in scores.entries],
        "k": pa.array([e.k for e in scores.entries], pa.int32()),
    }
    columns.update({name: np.asarray(values) for name, values in scores.per_image.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path
