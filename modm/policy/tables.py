"""The k tables: similarity thresholds and the denoising steps a hit at or above each may skip.

A leaf module (pydantic only): the config schema takes its defaults and presets from here, and the policy modules
import the schema, so nothing here may import `modm.config`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "KRule",
    "MINILM_TEXT_TABLE",
    "MODM_CLIP_TABLE",
    "MODM_TABLE_TOTAL_STEPS",
    "NAMED_K_TABLES",
    "NIRVANA_K_CHOICES",
    "NIRVANA_TABLE",
]


class KRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_score: float = Field(ge=-1.0, le=1.0, description="Lowest similarity for this rule (inclusive).")
    k: int = Field(gt=0, description="Denoising steps skipped of T when a hit scores at least min_score.")


MODM_TABLE_TOTAL_STEPS = 50  # the T that MoDM's k tables (and the ones below) are written for
# MoDM's table for CLIP ViT-L/14 text->image cosine (code: serving/*/retrieve_best_image).
MODM_CLIP_TABLE: tuple[KRule, ...] = (
    KRule(min_score=0.30, k=30),
    KRule(min_score=0.29, k=25),
    KRule(min_score=0.28, k=15),
    KRule(min_score=0.27, k=10),
    KRule(min_score=0.25, k=5),
)
# all-MiniLM-L6-v2 text->text cosine: paraphrases score 0.55-0.75, near-duplicates > 0.9, unrelated < 0.2.
MINILM_TEXT_TABLE: tuple[KRule, ...] = (
    KRule(min_score=0.95, k=30),
    KRule(min_score=0.90, k=25),
    KRule(min_score=0.80, k=15),
    KRule(min_score=0.70, k=10),
    KRule(min_score=0.60, k=5),
)
# NIRVANA's table on text->text cosine (MoDM repo, serving_system_N.py); its k are the steps it has latents for.
# NIRVANA compares with a strict '>' (KTable.nirvana()); mode 'nirvana' uses this table and no other.
NIRVANA_TABLE: tuple[KRule, ...] = (
    KRule(min_score=0.95, k=25),
    KRule(min_score=0.90, k=20),
    KRule(min_score=0.85, k=15),
    KRule(min_score=0.75, k=10),
    KRule(min_score=0.65, k=5),
)
# The steps after which NIRVANA caches the large model's latents: exactly the k its table can grant.
NIRVANA_K_CHOICES: tuple[int, ...] = tuple(sorted(rule.k for rule in NIRVANA_TABLE))
NAMED_K_TABLES: dict[str, tuple[KRule, ...]] = {
    "modm-clip": MODM_CLIP_TABLE,
    "minilm-text": MINILM_TEXT_TABLE,
    "nirvana": NIRVANA_TABLE,
}
