"""In-world k-table calibration samples: MoDM's hits replayed with the world's models, graded by the judge.

A cache of the large model's images of world prompts; a stream of queries related to them by the demo workload's
locality model (`modm.world.demo_workload`: a rephrase of a cached scene, a variation of one attribute of it, or a
new scene). Each query retrieves its best cached image as MoDM does (world CLIP text embedding against the cached
images' embeddings, cosine score), and the small model refines that image at every k of `K_CHOICES` (img2img at
strength 1 - k/T, as the engine serves a hit). The quality Q of an image is the judge's GenEval-style verdict (1 when
it shows every attribute its prompt names, else 0); Q_full is the verdict on the large model's full T-step image of
the same query. The samples (score, k, quality, full_quality) are what `modm policy calibrate` fits a table to.

With a `scorer` (the world's second CLIP) a second set of samples grades the same images by CLIPScore, MoDM's own Q
(its table was fitted with alpha = 0.95 on CLIPScore): a continuous score barely moves when an attribute is wrong,
so the judge's all-or-nothing verdict is the stricter rule and CLIPScore the paper's.

The run also grades every cached image against every query, which bounds what any retrieval could do on the
stream at no quality loss (`preserved_quality_ceiling`): only queries that some cached image already answers can
hit without a loss, and a hit inherits its cached image's errors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from modm.policy.calibration import QualitySample, hit_cost, throughput_gain_bound
from modm.world.captions import TemplateSet, caption_scene
from modm.world.demo_workload import REPHRASE, VARY, vary_scene
from modm.world.eval import clip_scores
from modm.world.judge import Judge, accuracy, score_image
from modm.world.scene import Scene, Split, sample_scene

K_CHOICES = (5, 10, 15, 20, 25, 30)  # the k MoDM's table grants (of T = 50)
QUALITY_ATTRIBUTE = "all"  # the judge's verdict that is Q: every attribute the prompt names is right
CALIBRATION_SEED = 0


@dataclass(frozen=True)
class CalibrationQuery:
    prompt: str
    scene: Scene
    mentions: frozenset[str]
    relation: str  # "rephrase", "vary" or "new": how the query was drawn from its cached scene


def calibration_stream(cached: int, queries: int, seed: int = CALIBRATION_SEED):
    """(cached prompts and scenes, queries): each query relates to a random cached scene by the locality model."""
    rng = np.random.default_rng(seed)
    cache = []
    for _ in range(cached):
        scene = sample_scene(rng, Split.TRAIN)
        cache.append((caption_scene(scene, rng).text, scene))
    stream = []
    for _ in range(queries):
        draw = rng.random()
        base = cache[int(rng.integers(len(cache)))][1]
        if draw < REPHRASE:
            scene, relation = base, "rephrase"
        elif draw < REPHRASE + VARY:
            scene, relation = vary_scene(base, rng), "vary"
        else:
            scene, relation = sample_scene(rng, Split.TRAIN), "new"
        template_set = TemplateSet.QUERY if rng.random() < 0.3 else TemplateSet.GALLERY
        caption = caption_scene(scene, rng, template_set)
        stream.append(CalibrationQuery(caption.text, scene, caption.mentions, relation))
    return cache, stream


ImagesFn = Callable[[Sequence[str], Sequence[int]], list[Image.Image]]
RefineFn = Callable[[Sequence[str], Sequence[Image.Image], Sequence[int], float], list[Image.Image]]


def _batched(fn, items: Sequence, batch_size: int, *rest) -> list:
    out: list = []
    for start in range(0, len(items), batch_size):
        out.extend(fn(items[start : start + batch_size], *(r[start : start + batch_size] for r in rest)))
    return out


@dataclass
class CalibrationRun:
    samples: list[QualitySample]
    full_accuracy: dict[str, float]  # the large model's full generations of the queries
    refined_accuracy: dict[int, dict[str, float]]  # per k, over all queries
    scores: list[float]
    relations: list[str]
    cached_quality: list[float]  # per query, Q of its best-scoring cached image itself, before any refinement
    servable: list[bool]  # per query, whether any cached image already has Q = 1 (what an oracle retrieval could hit)
    clip_samples: list[QualitySample] | None = None  # Q = CLIPScore of the scorer (when one was given)

    @property
    def full_clip_score(self) -> float | None:
        """Mean CLIPScore of the large model's full images (every query once per k, so the mean over samples)."""
        if not self.clip_samples:
            return None
        return float(np.mean([s.full_quality for s in self.clip_samples]))

    @property
    def refined_clip_score(self) -> dict[int, float] | None:
        """Per k, the mean CLIPScore of the refinements."""
        if not self.clip_samples:
            return None
        return {k: float(np.mean([s.quality for s in rows])) for k, rows in samples_by_k(self.clip_samples).items()}


def samples_by_k(samples: Sequence[QualitySample]) -> dict[int, list[QualitySample]]:
    """The samples of each k, in their order (calibration_samples writes k after k, each in query order)."""
    by_k: dict[int, list[QualitySample]] = {}
    for sample in samples:
        by_k.setdefault(sample.k, []).append(sample)
    return by_k


def calibration_samples(
    cache: Sequence[tuple[str, Scene]],
    queries: Sequence[CalibrationQuery],
    *,
    generate_large: ImagesFn,
    refine_small: RefineFn,
    embedder,
    judge: Judge,
    total_steps: int,
    k_choices: Sequence[int] = K_CHOICES,
    batch_size: int = 16,
    scorer=None,
    progress: Callable[[str], None] = lambda _: None,
) -> CalibrationRun:
    """Replay the queries' hits at every k; Q is the judge's verdict on `QUALITY_ATTRIBUTE` (and, with a `scorer`,
    its CLIPScore in `clip_samples`)."""
    if not cache or not queries:
        raise ValueError("calibration needs a non-empty cache and query stream")
    if any(not 0 < k < total_steps for k in k_choices):
        raise ValueError(f"every k of {list(k_choices)} must be in (0, {total_steps})")
    progress(f"large: {len(cache)} cached images")
    cached_images = _batched(generate_large, [p for p, _ in cache], batch_size, list(range(len(cache))))
    progress(f"large: {len(queries)} full generations")
    seeds = [100_000 + i for i in range(len(queries))]
    prompts = [q.prompt for q in queries]
    full = _batched(generate_large, prompts, batch_size, seeds)
    similarity = embedder.embed_text(prompts) @ embedder.embed_images(cached_images).T
    best = np.argmax(similarity, axis=1)
    scores = [float(similarity[i, j]) for i, j in enumerate(best)]
    sources = [cached_images[j] for j in best]

    def verdicts(images):
        return [score_image(r, q.scene, q.mentions) for r, q in zip(judge.read(images), queries)]

    cached_reads = judge.read(cached_images)
    # (queries, cached): Q of every cached image for every query, as if each were retrieved (an oracle's choices)
    satisfied = np.array(
        [[score_image(r, q.scene, q.mentions)[QUALITY_ATTRIBUTE] for r in cached_reads] for q in queries], dtype=float
    )

    full_verdicts = verdicts(full)
    full_clip = clip_scores(scorer, full, prompts) if scorer is not None else None
    samples: list[QualitySample] = []
    clip_samples: list[QualitySample] = []
    refined_accuracy = {}
    for k in k_choices:
        progress(f"small: refinements at k={k}")
        strength = 1.0 - k / total_steps
        refined = _batched(lambda p, i, s: refine_small(p, i, s, strength), prompts, batch_size, sources, seeds)
        refined_verdicts = verdicts(refined)
        refined_accuracy[k] = accuracy(refined_verdicts)
        samples += [
            QualitySample(score, k, float(r[QUALITY_ATTRIBUTE]), float(f[QUALITY_ATTRIBUTE]))
            for score, r, f in zip(scores, refined_verdicts, full_verdicts)
        ]
        if full_clip is not None:
            clip_samples += [
                QualitySample(score, k, float(r), float(f))
                for score, r, f in zip(scores, clip_scores(scorer, refined, prompts), full_clip)
            ]
    return CalibrationRun(
        samples,
        accuracy(full_verdicts),
        refined_accuracy,
        scores,
        [q.relation for q in queries],
        cached_quality=[float(satisfied[i, j]) for i, j in enumerate(best)],
        servable=[bool(row.max() >= 1.0) for row in satisfied],
        clip_samples=clip_samples if full_clip is not None else None,
    )


def score_quantiles(scores) -> dict[str, float]:
    """p10 / p50 / p90 of retrieval scores: where a k table's thresholds fall among the queries."""
    return dict(zip(("p10", "p50", "p90"), np.quantile(np.asarray(scores), [0.1, 0.5, 0.9]).tolist()))


def relation_breakdown(run: CalibrationRun) -> dict[str, dict]:
    """Per relation of query to cache (rephrase / vary / new): the number of queries, the quantiles of their best
    retrieval score, and the mean Q (the judge's verdict on `QUALITY_ATTRIBUTE`) of the large model's full image and
    of the refinement at each k. It says which queries a score threshold lets through and what a hit costs them."""
    queries = len(run.relations)
    by_k = samples_by_k(run.samples)
    if any(len(rows) != queries for rows in by_k.values()):
        raise ValueError(f"every k needs one sample per query ({queries}); got {[len(r) for r in by_k.values()]}")
    if not by_k:
        raise ValueError("a calibration run without samples has nothing to break down")
    full = next(iter(by_k.values()))  # every k's samples carry the same full_quality per query
    out = {}
    for relation in sorted(set(run.relations)):
        rows = [i for i, r in enumerate(run.relations) if r == relation]
        out[relation] = {
            "queries": len(rows),
            "score_quantiles": score_quantiles(np.asarray(run.scores)[rows]),
            "full_quality": float(np.mean([full[i].full_quality for i in rows])),
            "cached_quality": float(np.mean([run.cached_quality[i] for i in rows])),
            "servable": float(np.mean([run.servable[i] for i in rows])),
            "refined_quality": {k: float(np.mean([samples[i].quality for i in rows])) for k, samples in by_k.items()},
        }
    return out


def preserved_quality_ceiling(run: CalibrationRun, *, total_steps: int, large_small_step_ratio: float) -> dict:
    """What any retrieval could gain at no quality loss on this stream: only the servable queries (some cached image
    already right for them) can hit without a loss. Per k: `gain_bound`, the model-side throughput bound
    (`throughput_gain_bound`) of hitting every servable query at that k, and `kept`, the fraction of the queries
    whose retrieved image is right that stay right after the refinement. Refinement losses (1 - kept) and a real
    retrieval's misses only lower what is reachable."""
    servable = float(np.mean(run.servable))
    right = [i for i, q in enumerate(run.cached_quality) if q >= 1.0]
    per_k = {}
    for k, samples in samples_by_k(run.samples).items():
        per_k[k] = {
            "kept": float(np.mean([samples[i].quality for i in right])) if right else None,
            "gain_bound": throughput_gain_bound(servable, hit_cost(k, total_steps, large_small_step_ratio)),
        }
    return {
        "servable": servable,
        "retrieved_right": float(np.mean(run.cached_quality)),
        "large_small_step_ratio": large_small_step_ratio,
        "per_k": per_k,
    }


def pipeline_refiner(pipe, *, total_steps: int, guidance_scale: float) -> RefineFn:
    """img2img of a world SDXL-class pipeline as the engine serves a hit: T steps scheduled, the last
    int(T * strength) run from the re-noised cached image; each image's noise from its own seed."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from modm.world.pipelines import WORLD_IMAGE_SIZE

    refine = StableDiffusionXLImg2ImgPipeline.from_pipe(pipe)
    refine.set_progress_bar_config(disable=True)

    def run(prompts, images, seeds, strength):
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        with torch.inference_mode():
            out = refine(
                prompt=list(prompts),
                image=[im.convert("RGB").resize((WORLD_IMAGE_SIZE, WORLD_IMAGE_SIZE)) for im in images],
                strength=strength,
                num_inference_steps=total_steps,
                guidance_scale=guidance_scale,
                generator=generators,
            )
        return out.images

    return run
