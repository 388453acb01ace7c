"""In-world k-table calibration samples (`modm.world.calibrate`) with the renderer standing in for the models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from modm.policy import fit_k_table
from modm.world.calibrate import (
    calibration_samples,
    calibration_stream,
    preserved_quality_ceiling,
    relation_breakdown,
)
from modm.world.cli import COMMITTED_WORLD
from modm.world.world import World


def test_the_stream_is_deterministic_and_relates_queries_to_the_cache():
    cache_a, queries_a = calibration_stream(20, 60, seed=3)
    cache_b, queries_b = calibration_stream(20, 60, seed=3)
    assert cache_a == cache_b and queries_a == queries_b
    relations = {q.relation for q in queries_a}
    assert relations == {"rephrase", "vary", "new"}
    cached_scenes = [scene for _, scene in cache_a]
    assert all(q.scene in cached_scenes for q in queries_a if q.relation == "rephrase")
    assert calibration_stream(20, 60, seed=4)[1] != queries_a


def test_a_refiner_that_returns_the_cached_image_is_right_on_rephrases_and_wrong_on_variations():
    """The renderer as the large model; the 'small' hands back the retrieved cached image unchanged. Rephrased
    queries then retrieve an image of their own scene (right); varied ones mostly one that differs in an attribute."""
    from modm.embedding.hf_clip import HfClipEmbedder
    from modm.world.judge import Judge

    world = World(seed=0)
    cache, queries = calibration_stream(24, 48, seed=1)
    scene_of = {prompt: scene for prompt, scene in cache} | {q.prompt: q.scene for q in queries}

    def generate_large(prompts, seeds):
        return [Image.fromarray(world.render(scene_of[p])) for p in prompts]

    def refine_small(prompts, images, seeds, strength):
        assert 0 < strength < 1
        return list(images)

    run = calibration_samples(
        cache,
        queries,
        generate_large=generate_large,
        refine_small=refine_small,
        embedder=HfClipEmbedder(COMMITTED_WORLD / "clip", device=torch.device("cpu"), batch_size=64),
        judge=Judge.load(COMMITTED_WORLD / "judge", torch.device("cpu")),
        total_steps=50,
        k_choices=(10, 30),
        scorer=HfClipEmbedder(COMMITTED_WORLD / "clip_score", device=torch.device("cpu"), batch_size=64),
    )
    assert len(run.samples) == 2 * len(queries)
    # the same hits graded by the second CLIP's CLIPScore (MoDM's Q): same (score, k) rows, Q in [0, 100]
    assert [(c.score, c.k) for c in run.clip_samples] == [(s.score, s.k) for s in run.samples]
    assert all(0 <= c.quality <= 100 and 0 <= c.full_quality <= 100 for c in run.clip_samples)
    clip_by_relation = {}
    for sample, relation in zip(run.clip_samples, run.relations * 2):
        clip_by_relation.setdefault(relation, []).append(sample.quality / max(sample.full_quality, 1e-6))
    # a rephrase's cached image is its own scene: its CLIPScore is close to the full image's, a new scene's is not
    assert np.mean(clip_by_relation["rephrase"]) > np.mean(clip_by_relation["new"]) + 0.1
    assert set(run.refined_clip_score) == {10, 30} and run.full_clip_score > 0
    assert run.full_accuracy["all"] >= 0.9  # the renderer's own image of every query
    by_relation = relation_breakdown(run)
    assert sum(b["queries"] for b in by_relation.values()) == len(queries)
    rephrase, vary = (by_relation[r]["refined_quality"] for r in ("rephrase", "vary"))
    assert rephrase.keys() == {10, 30} and rephrase[10] == rephrase[30]  # the refiner ignores k
    # a variation may change an attribute its caption does not name, or retrieve another cached scene it matches
    assert rephrase[30] >= 0.8 and vary[30] <= rephrase[30] - 0.25
    assert all(b["full_quality"] >= 0.8 for b in by_relation.values())  # the renderer draws every query right
    # rephrases retrieve with higher scores than new scenes, so a table fits above the new scenes' scores
    assert by_relation["rephrase"]["score_quantiles"]["p50"] > by_relation["new"]["score_quantiles"]["p50"]
    # every cached image was graded against every query: a rephrase's own scene is cached, so it is servable
    assert len(run.cached_quality) == len(run.servable) == len(queries)
    assert by_relation["rephrase"]["servable"] == 1.0
    assert by_relation["rephrase"]["cached_quality"] == rephrase[30]  # the refiner hands back the cached image
    ceiling = preserved_quality_ceiling(run, total_steps=50, large_small_step_ratio=4.0)
    assert ceiling["servable"] == np.mean(run.servable) and ceiling["retrieved_right"] == np.mean(run.cached_quality)
    assert {k: row["kept"] for k, row in ceiling["per_k"].items()} == {10: 1.0, 30: 1.0}  # nothing is refined away
    # fewer steps kept at k = 30, so a higher bound: 1 / ((1 - s) + s * (1 - k / 50) / 4)
    s = ceiling["servable"]
    assert ceiling["per_k"][30]["gain_bound"] == pytest.approx(1 / ((1 - s) + s * 0.4 / 4))
    assert ceiling["per_k"][30]["gain_bound"] > ceiling["per_k"][10]["gain_bound"] > 1
    table = fit_k_table(run.samples, alpha=0.9, total_steps=50, min_samples=5)
    assert table and all(rule.k in (10, 30) for rule in table)


def test_bad_k_is_refused():
    cache, queries = calibration_stream(2, 2)
    with pytest.raises(ValueError, match="must be in"):
        calibration_samples(
            cache,
            queries,
            generate_large=None,
            refine_small=None,
            embedder=None,
            judge=None,
            total_steps=50,
            k_choices=(50,),
        )


def test_the_calibrate_command_writes_the_preserved_quality_ceiling(tmp_path, capsys):
    """`modm world calibrate` on the committed world, a few steps: the JSON carries the ceiling with the world's
    measured large:small step cost."""
    import json

    from modm.world.cli import main

    out = tmp_path / "calibration.json"
    argv = ["calibrate", "--cached", "4", "--queries", "6", "--k", "1", "2", "--total-steps", "4"]
    assert main([*argv, "--samples-out", str(tmp_path / "s.csv"), "--json", str(out)]) == 0
    ceiling = json.loads(out.read_text(encoding="utf-8"))["preserved_quality_ceiling"]
    costs = json.loads((COMMITTED_WORLD / "step_costs" / "step_costs.json").read_text(encoding="utf-8"))
    assert ceiling["large_small_step_ratio"] == costs["large_small_ratio_serving_batch"]
    assert set(ceiling["per_k"]) == {"1", "2"} and 0 <= ceiling["servable"] <= 1
    assert all(row["gain_bound"] >= 1 for row in ceiling["per_k"].values())
    assert "an oracle's hit rate" in capsys.readouterr().out
