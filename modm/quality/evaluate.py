"""One pass over an image set: per-image CLIPScore / PickScore and Inception outputs, each image read once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
from PIL import Image

from modm.quality.errors import QualityInputError
from modm.quality.fid import FeatureStats, feature_stats
from modm.quality.images import ImageEntry, iter_image_batches, prompts_of
from modm.quality.inception import InceptionFeatureExtractor

__all__ = ["DEFAULT_READ_BATCH", "ImageSetScores", "PromptImageMetric", "compute_feature_stats", "score_image_set"]

DEFAULT_READ_BATCH = 32  # images decoded at a time; each model batches within it by its own batch_size


class PromptImageMetric(Protocol):
    """A per-image score of how well an image fits its prompt (CLIPScore, PickScore)."""

    name: str

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        """(n,) float64 scores of matched pairs."""


@dataclass(frozen=True)
class ImageSetScores:
    entries: list[ImageEntry]
    per_image: dict[str, np.ndarray]  # metric name -> (n,) scores
    features: np.ndarray | None = None  # (n, dims) Inception features
    logits: np.ndarray | None = None  # (n, classes) Inception logits


def score_image_set(
    entries: Sequence[ImageEntry],
    metrics: Sequence[PromptImageMetric] = (),
    inception: InceptionFeatureExtractor | None = None,
    *,
    read_batch: int = DEFAULT_READ_BATCH,
) -> ImageSetScores:
    entries = list(entries)
    if not entries:
        raise QualityInputError("no images to score")
    if not metrics and inception is None:
        raise QualityInputError("nothing to compute: give at least one metric or the inception extractor")
    names = [m.name for m in metrics]
    if len(set(names)) != len(names):
        raise QualityInputError(f"metric names must be unique, got {names}")
    prompts = prompts_of(entries) if metrics else []
    per_image = {name: np.empty(len(entries), np.float64) for name in names}
    features, logits = [], []
    for positions, images in iter_image_batches(entries, read_batch):
        for metric in metrics:
            per_image[metric.name][positions] = metric.score(images, prompts[positions])
        if inception is not None:
            out = inception.extract(images)
            features.append(out.features)
            logits.append(out.logits)
    for name, values in per_image.items():
        if not np.isfinite(values).all():
            raise QualityInputError(
                f"{name} produced non-finite scores for {int((~np.isfinite(values)).sum())} image(s)"
            )
    return ImageSetScores(
        entries, per_image, np.concatenate(features) if features else None, np.concatenate(logits) if logits else None
    )


def compute_feature_stats(
    entries: Sequence[ImageEntry], inception: InceptionFeatureExtractor, *, read_batch: int = DEFAULT_READ_BATCH
) -> FeatureStats:
    """FID statistics of an image set (prompts are not needed)."""
    scores = score_image_set(entries, (), inception, read_batch=read_batch)
    return feature_stats(scores.features, inception.extractor_id)
