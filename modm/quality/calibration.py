"""The quality function Q for k-table calibration (`modm.policy.calibration`, MoDM §5.2: Q_hit(k) >= alpha Q_full).

A calibration pair is one prompt, the retrieval score s of its best cached match, the k its refinement skipped, the
refined image and the large model's full generation of the same prompt. Q is a prompt-image metric (CLIPScore in
MoDM); each pair becomes a `QualitySample(score, k, quality=Q(refined), full_quality=Q(full))`. Samples are written
as a table with columns score, k, quality, full_quality, which is what `modm policy calibrate` reads.

Manifest (.parquet or .csv) columns: prompt, score, k, refined_path, full_path (relative paths resolve against the
manifest's folder). A full image shared by several rows (one prompt refined at several k) is scored once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from modm.policy.calibration import QualitySample
from modm.quality.errors import QualityInputError
from modm.quality.evaluate import DEFAULT_READ_BATCH, PromptImageMetric
from modm.quality.images import ImageEntry, read_manifest_table, iter_image_batches

__all__ = [
    "CALIBRATION_COLUMNS",
    "CalibrationPair",
    "load_calibration_manifest",
    "quality_samples",
    "write_quality_samples",
]

CALIBRATION_COLUMNS = ("prompt", "score", "k", "refined_path", "full_path")


@dataclass(frozen=True)
class CalibrationPair:
    prompt: str
    score: float  # retrieval similarity of the prompt to the cached image that was refined
    k: int  # denoising steps skipped by the refinement
    refined_path: Path  # the refined (hit) image
    full_path: Path  # the large model's full generation for the same prompt


def load_calibration_manifest(path: str | Path) -> list[CalibrationPair]:
    path = Path(path)
    table = read_manifest_table(path)
    missing = [c for c in CALIBRATION_COLUMNS if c not in table.column_names]
    if missing:
        raise QualityInputError(f"calibration manifest {path} lacks column(s) {missing}")
    pairs = []
    for i, row in enumerate(table.select(list(CALIBRATION_COLUMNS)).to_pylist()):
        prompt, score, k = row["prompt"], row["score"], row["k"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise QualityInputError(f"{path}: row {i} has no prompt")
        if score is None or not math.isfinite(float(score)):
            raise QualityInputError(f"{path}: row {i}: score={score!r} is not a finite number")
        if k is None or float(k) != int(float(k)) or int(float(k)) <= 0:
            raise QualityInputError(f"{path}: row {i}: k={k!r} must be a positive integer")
        images = []
        for column in ("refined_path", "full_path"):
            if not row[column]:
                raise QualityInputError(f"{path}: row {i} has an empty {column}")
            image = Path(row[column])
            images.append(image if image.is_absolute() else path.parent / image)
        pairs.append(CalibrationPair(prompt.strip(), float(score), int(float(k)), images[0], images[1]))
    if not pairs:
        raise QualityInputError(f"calibration manifest {path} has no rows")
    return pairs


def _score_all(entries: list[ImageEntry], metric: PromptImageMetric, read_batch: int) -> list[float]:
    scores: list[float] = []
    for positions, images in iter_image_batches(entries, read_batch):
        scores.extend(float(s) for s in metric.score(images, [e.prompt for e in entries[positions]]))
    return scores


def quality_samples(
    pairs: Sequence[CalibrationPair], metric: PromptImageMetric, *, read_batch: int = DEFAULT_READ_BATCH
) -> list[QualitySample]:
    """One `QualitySample` per pair, with Q = `metric` of each image against the pair's prompt."""
    if not pairs:
        raise QualityInputError("no calibration pairs")
    refined = _score_all([ImageEntry(p.refined_path, p.prompt) for p in pairs], metric, read_batch)
    full_keys = list(dict.fromkeys((p.full_path, p.prompt) for p in pairs))
    full_scores = dict(
        zip(full_keys, _score_all([ImageEntry(path, prompt) for path, prompt in full_keys], metric, read_batch))
    )
    return [
        QualitySample(score=p.score, k=p.k, quality=q, full_quality=full_scores[(p.full_path, p.prompt)])
        for p, q in zip(pairs, refined)
    ]


def write_quality_samples(path: str | Path, samples: Sequence[QualitySample]) -> Path:
    """Parquet or CSV (by suffix) with columns score, k, quality, full_quality."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path)
    table = pa.table(
        {
            "score": [s.score for s in samples],
            "k": pa.array([s.k for s in samples], pa.int32()),
            "quality": [s.quality for s in samples],
            "full_quality": [s.full_quality for s in samples],
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    elif path.suffix == ".csv":
        pacsv.write_csv(table, path)
    else:
        raise QualityInputError(f"write calibration samples to a .parquet or .csv file, not {path}")
    return path
