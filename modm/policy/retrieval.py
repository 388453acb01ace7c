"""Similarity score -> hit/miss and k (steps skipped of T), the MoDM step function. Pure: numbers in, numbers out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from modm.config.schema import PolicyConfig
from modm.policy.tables import NIRVANA_TABLE, KRule


@dataclass(frozen=True)
class RetrievalDecision:
    hit: bool
    k: int  # steps skipped of total_steps; 0 for a miss
    strength: float  # img2img strength = 1 - k/T; 1.0 for a miss (a full generation)
    score: float | None

    @classmethod
    def miss(cls, score: float | None = None) -> "RetrievalDecision":
        return cls(hit=False, k=0, strength=1.0, score=score)


class KTable:
    """Rules checked from the highest score down; the first rule whose threshold the score reaches decides k."""

    def __init__(self, rules: Sequence[KRule], total_steps: int, *, inclusive: bool = True):
        # Validation lives in PolicyConfig; build through it so a table here is always a valid one.
        cfg = PolicyConfig(total_steps=total_steps, k_table=tuple(rules))
        self.rules = cfg.k_table
        self.total_steps = cfg.total_steps
        self.inclusive = inclusive

    @classmethod
    def from_config(cls, cfg: PolicyConfig) -> "KTable":
        return cls(cfg.k_table, cfg.total_steps)

    @classmethod
    def nirvana(cls, total_steps: int = 50) -> "KTable":
        return cls(NIRVANA_TABLE, total_steps, inclusive=False)

    @property
    def hit_threshold(self) -> float:
        return self.rules[-1].min_score

    def decide(self, score: float | None) -> RetrievalDecision:
        if score is None:  # nothing cached (for this tenant)
            return RetrievalDecision.miss()
        for rule in self.rules:
            if score >= rule.min_score if self.inclusive else score > rule.min_score:
                return RetrievalDecision(
                    hit=True, k=rule.k, strength=1.0 - rule.k / self.total_steps, score=float(score)
                )
        return RetrievalDecision.miss(float(score))
