"""Quality in the world: judge accuracy, world CLIPScore, FID on judge features, and retrieval accuracy.

A model or system is evaluated through a `PromptGenerator`, a function (prompts, seeds) -> images. The prompts are
gallery captions of world samples from an index range no build step trains on; the judge reads each image and
compares it with the scene its prompt described. CLIPScore is the *second* CLIP's (the one that never retrieves),
100 * max(cos(image, prompt), 0) as in torchmetrics. FID compares judge features of the generated images with those of
real world images of another index range; with too few images for a full-rank covariance it is not reported and
the row says why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from modm.world.captions import scene_matches
from modm.world.judge import FEATURE_DIM, Judge, accuracy, score_image
from modm.world.world import Split, World

PromptGenerator = Callable[[Sequence[str], Sequence[int]], Sequence[Image.Image]]

# Index ranges of the evaluation draws: far above anything a build step trains on (0 .. train_images).
EVAL_PROMPTS_START = 1_000_000
REAL_IMAGES_START = 2_000_000
RETRIEVAL_GALLERY_START = 3_000_000
RETRIEVAL_GALLERY_SIZE = 1000
# Real images FID compares against: at least this many, so that the reference set adds little of the finite-sample
# bias (real vs real on judge features: 17 at 1,000 vs 3,000 images, 9 at 3,000 vs 3,000; blurred images: 132).
REAL_IMAGES_MIN = 2000


@dataclass
class ModelEval:
    name: str
    samples: int
    judge: dict[str, float]
    judge_heldout: dict[str, float] | None
    clip_score: float | None
    fid: float | None
    fid_note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "judge": self.judge,
            "judge_heldout": self.judge_heldout,
            "clip_score": self.clip_score,
            "fid": self.fid,
            "fid_note": self.fid_note,
            **self.extra,
        }


def ground_truth_generator(world: World) -> PromptGenerator:
    """The world's own renderer as a 'model': the image of the prompt's scene (prompts must be world captions)."""

    def generate(prompts: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]:
        return [world.sample(*_sample_of_seed(int(seed))).pil() for seed in seeds]

    return generate


def other_image_generator(world: World, shift: int = 7919) -> PromptGenerator:
    """A floor for the metrics: a real world image, but of another sample's prompt."""

    def generate(prompts: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]:
        images = []
        for seed in seeds:
            index, split = _sample_of_seed(int(seed))
            images.append(world.sample(index + shift, split).pil())
        return images

    return generate


# Seeds carry the sample index and, above HELDOUT_SEED_OFFSET, the held-out split: a generator sees only
# (prompt, seed), and the ground-truth generator needs the sample back.
HELDOUT_SEED_OFFSET = 10_000_000


def _sample_of_seed(seed: int) -> tuple[int, Split]:
    if seed >= HELDOUT_SEED_OFFSET:
        return seed - HELDOUT_SEED_OFFSET, Split.HELDOUT
    return seed, Split.TRAIN


def _generate(
    generator: PromptGenerator,
    prompts: list[str],
    seeds: list[int],
    batch_size: int,
    progress: Callable[[int], None] | None,
) -> list[Image.Image]:
    images: list[Image.Image] = []
    for start in range(0, len(prompts), batch_size):
        batch = list(generator(prompts[start : start + batch_size], seeds[start : start + batch_size]))
        if len(batch) != len(prompts[start : start + batch_size]):
            raise ValueError(
                f"generator returned {len(batch)} images for {len(prompts[start : start + batch_size])} prompts"
            )
        images.extend(batch)
        if progress is not None:
            progress(len(batch))
    return images


def clip_scores(scorer, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
    """Per image, 100 * max(cos, 0) between it and its prompt, in the scorer's embedding space."""
    cos = np.sum(scorer.embed_images(images) * scorer.embed_text(prompts), axis=1)
    return 100.0 * np.maximum(cos, 0.0)


def clip_score(scorer, images: Sequence[Image.Image], prompts: Sequence[str]) -> float:
    """Mean CLIPScore of the images against their prompts (`clip_scores`)."""
    return float(np.mean(clip_scores(scorer, images, prompts)))


def fid_on_judge_features(judge: Judge, images, real_features: np.ndarray) -> tuple[float | None, str]:
    from modm.quality.errors import FidNumericalError, QualityInputError
    from modm.quality.fid import feature_stats, frechet_distance

    n = len(images)
    if min(n, len(real_features)) <= FEATURE_DIM:
        return None, (
            f"FID needs more than {FEATURE_DIM} images (judge features are {FEATURE_DIM}-d), got {n}: not reported"
        )
    try:
        result = frechet_distance(
            feature_stats(judge.features(images), "world-judge"), feature_stats(real_features, "world-judge")
        )
    except (QualityInputError, FidNumericalError) as err:
        return None, f"FID not computed: {err}"
    return result.fid, ""


def real_features(world: World, judge: Judge, n: int) -> np.ndarray:
    images = np.stack([world.sample(i).image for i in range(REAL_IMAGES_START, REAL_IMAGES_START + n)])
    return judge.features(images)


def evaluate_generator(
    name: str,
    generator: PromptGenerator,
    world: World,
    judge: Judge,
    scorer,
    samples: int,
    *,
    heldout_samples: int = 0,
    real: np.ndarray | None = None,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> ModelEval:
    """Judge accuracy, CLIPScore and FID of one model or system on `samples` world prompts (and held-out ones)."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    drawn = [world.sample(i) for i in range(EVAL_PROMPTS_START, EVAL_PROMPTS_START + samples)]
    prompts, seeds = [s.prompt for s in drawn], [s.index for s in drawn]
    images = _generate(generator, prompts, seeds, batch_size, progress)
    readings = judge.read(images)
    judge_acc = accuracy([score_image(r, s.scene, s.caption.mentions) for r, s in zip(readings, drawn)])
    heldout_acc = None
    if heldout_samples > 0:
        held = [world.sample(i, Split.HELDOUT) for i in range(EVAL_PROMPTS_START, EVAL_PROMPTS_START + heldout_samples)]
        held_images = _generate(
            generator, [s.prompt for s in held], [HELDOUT_SEED_OFFSET + s.index for s in held], batch_size, progress
        )
        heldout_acc = accuracy(
            [score_image(r, s.scene, s.caption.mentions) for r, s in zip(judge.read(held_images), held)]
        )
    real = real_features(world, judge, max(samples, REAL_IMAGES_MIN)) if real is None else real
    fid, note = fid_on_judge_features(judge, images, real)
    score = clip_score(scorer, images, prompts) if scorer is not None else None
    return ModelEval(
        name=name, samples=samples, judge=judge_acc, judge_heldout=heldout_acc, clip_score=score, fid=fid, fid_note=note
    )


def retrieval_accuracy(
    embedder, world: World, gallery_size: int = RETRIEVAL_GALLERY_SIZE, start: int = RETRIEVAL_GALLERY_START
) -> float:
    """Text->image top-1: each gallery image's paraphrase query (a reserved template) against all gallery images;
    a hit counts when the retrieved image has every attribute the query mentions."""
    gallery = [world.sample(i) for i in range(start, start + gallery_size)]
    queries = [world.query(s.index) for s in gallery]
    image_emb = embedder.embed_images([s.pil() for s in gallery])
    text_emb = embedder.embed_text([q.text for q in queries])
    top = np.argmax(text_emb @ image_emb.T, axis=1)
    return float(
        np.mean([scene_matches(gallery[j].scene, s.scene, q.mentions) for j, s, q in zip(top, gallery, queries)])
    )


def format_table(rows: Sequence[ModelEval], retrieval: dict[str, float]) -> str:
    head = (
        f"{'model':<16} {'n':>5} {'all':>6} {'shape':>6} {'colour':>6} {'size':>6} {'pos':>6} {'count':>6} "
        f"{'sh+col':>6} {'heldout sh+col':>14} {'CLIPScore':>9} {'FID':>8}"
    )
    lines = [head]
    for r in rows:
        j = r.judge
        held = f"{r.judge_heldout['shape_colour']:.3f}" if r.judge_heldout else "-"
        fid = f"{r.fid:.2f}" if r.fid is not None else "n/a"
        cs = f"{r.clip_score:.2f}" if r.clip_score is not None else "-"
        lines.append(
            f"{r.name:<16} {r.samples:>5} {j['all']:>6.3f} {j['shape']:>6.3f} {j['colour']:>6.3f} "
            f"{j['size']:>6.3f} {j['position']:>6.3f} {j['count']:>6.3f} {j['shape_colour']:>6.3f} "
            f"{held:>14} {cs:>9} {fid:>8}"
        )
        if r.fid_note:
            lines.append(f"  {r.name}: {r.fid_note}")
    for name, acc in retrieval.items():
        lines.append(
            f"retrieval (text->image top-1, paraphrase queries, {RETRIEVAL_GALLERY_SIZE} images) {name}: {acc:.3f}"
        )
    return "\n".join(lines)
