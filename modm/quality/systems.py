"""The quality side of a benchmark: one row per serving system, FID against a reference system's images.

MoDM reports each system's FID against the images the large model alone produced for the same prompts (and
CLIPScore / IS of each system). `compare_systems` does that over the image sets the load generator kept, scoring
every image once: per-system means of the prompt metrics, the Inception Score, and the FID of each system's
Inception features against the reference system's (0 for the reference itself).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from modm.quality.errors import QualityInputError
from modm.quality.evaluate import PromptImageMetric, score_image_set
from modm.quality.fid import check_rank, feature_stats, frechet_distance
from modm.quality.images import ImageEntry
from modm.quality.inception import InceptionFeatureExtractor
from modm.quality.inception_score import DEFAULT_IS_SPLITS, inception_score

__all__ = ["SystemQuality", "compare_systems", "format_system_table"]


@dataclass(frozen=True)
class SystemQuality:
    system: str
    n: int
    hit_rate: float | None
    means: dict[str, float]  # prompt metric -> mean over the system's images
    inception_score: float | None
    fid_vs_reference: float
    fid_reliable: bool  # False: fewer images than feature dims (computed anyway, marked)


def compare_systems(
    image_sets: Mapping[str, Sequence[ImageEntry]],
    reference: str,
    metrics: Sequence[PromptImageMetric],
    inception: InceptionFeatureExtractor,
    *,
    is_splits: int = DEFAULT_IS_SPLITS,
    allow_low_rank: bool = False,
) -> list[SystemQuality]:
    """Score each system's images; FID of each against `reference`'s. Refuses up front (before any model runs)
    when a set is empty or too small for the FID feature dimension (unless `allow_low_rank`)."""
    if reference not in image_sets:
        raise QualityInputError(f"reference system {reference!r} has no image set; got {sorted(image_sets)}")
    for name, entries in image_sets.items():
        if len(entries) < 2:
            raise QualityInputError(f"system {name!r} kept {len(entries)} image(s); FID needs at least 2")
        check_rank(len(entries), len(image_sets[reference]), int(inception.dims), allow_low_rank=allow_low_rank)
    scored = {name: score_image_set(list(entries), metrics, inception) for name, entries in image_sets.items()}
    reference_stats = feature_stats(scored[reference].features, inception.extractor_id)
    rows = []
    for name, scores in scored.items():
        fid = frechet_distance(
            feature_stats(scores.features, inception.extractor_id), reference_stats, allow_low_rank=allow_low_rank
        )
        hits = [e.hit for e in scores.entries if e.hit is not None]
        rows.append(
            SystemQuality(
                system=name,
                n=len(scores.entries),
                hit_rate=sum(hits) / len(hits) if hits else None,
                means={metric: float(values.mean()) for metric, values in scores.per_image.items()},
                inception_score=(
                    inception_score(scores.logits, is_splits).mean if len(scores.entries) >= is_splits else None
                ),
                fid_vs_reference=0.0 if name == reference else fid.fid,
                fid_reliable=fid.reliable,
            )
        )
    return rows


def format_system_table(rows: Sequence[SystemQuality], reference: str) -> str:
    metrics = list(dict.fromkeys(m for row in rows for m in row.means))
    header = (
        f"{'system':<18}{'images':>7}{'hit rate':>9}"
        + "".join(f"{m:>12}" for m in metrics)
        + f"{'IS':>8}{'FID vs ' + reference:>18}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        hit = "-" if row.hit_rate is None else f"{row.hit_rate:.0%}"
        inception = "-" if row.inception_score is None else f"{row.inception_score:.3f}"
        fid = f"{row.fid_vs_reference:.3f}" + ("" if row.fid_reliable else "*")
        lines.append(
            f"{row.system:<18}{row.n:>7}{hit:>9}"
            + "".join(f"{row.means[m]:>12.3f}" for m in metrics)
            + f"{inception:>8}{fid:>18}"
        )
    if not all(row.fid_reliable for row in rows):
        lines.append("* fewer images than feature dimensions: the covariance is singular, the FID indicative only")
    return "\n".join(lines)
