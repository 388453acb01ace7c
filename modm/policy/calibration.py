"""Fit a k table from (similarity, quality) samples with MoDM's rule Q_hit(k) >= alpha * Q_full (paper §5.2).

Each sample is one prompt refined at one k from its best cached match: its retrieval score, the quality of the
refined image and the quality of a full large-model generation of the same prompt (e.g. CLIPScore). For each k the
threshold is the lowest score s such that the samples scoring at least s keep mean(Q_hit) >= alpha * mean(Q_full).
Larger k skips more steps, so it needs a higher threshold; a k whose threshold does not beat the next larger k's is
dominated and dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from modm.config.schema import PolicyConfig
from modm.policy.tables import KRule


@dataclass(frozen=True)
class QualitySample:
    score: float
    k: int
    quality: float  # Q of the image refined at k
    full_quality: float  # Q of the full large-model image for the same prompt


def threshold_for_k(samples: list[QualitySample], alpha: float, min_samples: int) -> float | None:
    scores = np.array([s.score for s in samples], dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    hit_q = np.cumsum([samples[i].quality for i in order])
    full_q = np.cumsum([samples[i].full_quality for i in order])
    ok = hit_q >= alpha * full_q  # cumulative sums compare the means over the same prefix
    best = None
    for n in range(min_samples, len(order) + 1):
        # Only cut between distinct scores, so a threshold admits all samples at that score.
        if n < len(order) and scores[order[n]] == scores[order[n - 1]]:
            continue
        if ok[n - 1]:
            best = float(scores[order[n - 1]])
    return best


def fit_k_table(
    samples: Iterable[QualitySample], *, alpha: float = 0.95, total_steps: int = 50, min_samples: int = 20
) -> tuple[KRule, ...]:
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha={alpha} must be in (0, 1]")
    by_k: dict[int, list[QualitySample]] = {}
    for s in samples:
        if not (np.isfinite(s.score) and np.isfinite(s.quality) and np.isfinite(s.full_quality)):
            raise ValueError(f"non-finite sample {s}")
        if not 0 < s.k < total_steps:
            raise ValueError(f"sample k={s.k} must be in (0, {total_steps})")
        by_k.setdefault(int(s.k), []).append(s)
    if not by_k:
        raise ValueError("no calibration samples")
    rules: list[KRule] = []
    for k in sorted(by_k, reverse=True):
        threshold = threshold_for_k(by_k[k], alpha, min_samples)
        if threshold is None:
            continue
        threshold = round(threshold, 6)  # compared as stored: two raw thresholds may round to one
        if rules and threshold >= rules[-1].min_score:
            continue
        rules.append(KRule(min_score=threshold, k=k))
    if not rules:
        raise ValueError(f"no k reaches alpha={alpha} with at least {min_samples} samples")
    return PolicyConfig(total_steps=total_steps, k_table=tuple(rules)).k_table


def hit_cost(k: int, total_steps: int, large_small_step_ratio: float) -> float:
    """A hit's model cost in full large-model generations: the small model runs the T - k steps a hit keeps, each
    1 / ratio of a large step."""
    if not 0 <= k < total_steps:
        raise ValueError(f"k={k} must be in [0, {total_steps})")
    if not large_small_step_ratio > 0:
        raise ValueError(f"large_small_step_ratio={large_small_step_ratio} must be > 0")
    return (1.0 - k / total_steps) / large_small_step_ratio


def throughput_gain_bound(hit_rate: float, cost_of_hit: float) -> float:
    """The model-side throughput gain over serving every request in full with the large model when a fraction
    `hit_rate` of requests hit at `cost_of_hit` each: 1 / ((1 - h) + h * c). Embedding, retrieval and routing count
    as free here, so a measured gain lies below it."""
    if not 0 <= hit_rate <= 1:
        raise ValueError(f"hit_rate={hit_rate} must be in [0, 1]")
    if not cost_of_hit > 0:
        raise ValueError(f"cost_of_hit={cost_of_hit} must be > 0")
    return 1.0 / ((1.0 - hit_rate) + hit_rate * cost_of_hit)
