"""Fidelity in the world (`modm.world.fidelity`): the large model on two gloo ranks, and NIRVANA's hit replay."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from modm.config.parallel import ParallelConfig
from modm.policy import NIRVANA_K_CHOICES
from modm.policy.retrieval import KTable
from modm.world.calibrate import calibration_stream
from modm.world.cli import COMMITTED_WORLD
from modm.world.fidelity import ParallelWorldGenerator, mean_psnr, nirvana_replay
from modm.world.world import World

PROMPTS = ["a red circle on the left", "a small blue square at the top right"]
SEEDS = [3, 4]


@pytest.fixture(scope="module")
def one_rank_images():
    from modm.models.loading import load_pipeline
    from modm.world.pipelines import pipeline_generator, world_model_spec

    pipe = load_pipeline(world_model_spec(COMMITTED_WORLD / "large", "large", device="cpu"))
    return pipeline_generator(pipe, steps=6, role="large")(PROMPTS, SEEDS)


@pytest.mark.xdist_group("gloo")
def test_synchronous_distrifusion_on_two_ranks_reproduces_the_one_rank_images_and_naive_patch_does_not(
    one_rank_images,
):
    config = ParallelConfig(method="distrifusion", world_size=2, always_synchronous=True)
    with ParallelWorldGenerator(COMMITTED_WORLD / "large", config, steps=6) as generate:
        synchronous = generate(PROMPTS, SEEDS)
        again = generate(PROMPTS, SEEDS)  # the group serves batch after batch
    for image, reference in zip(synchronous, one_rank_images):
        difference = np.abs(np.asarray(image, np.int16) - np.asarray(reference, np.int16))
        assert difference.max() <= 1  # float rounding of the split attention, at most one 8-bit level
    assert mean_psnr(again, synchronous) == float("inf")

    naive = ParallelConfig(method="naive_patch", world_size=2)
    with ParallelWorldGenerator(COMMITTED_WORLD / "large", naive, steps=6) as generate:
        patched = generate(PROMPTS, SEEDS)
    assert mean_psnr(patched, one_rank_images) < 30  # each half denoised without the other: a different picture


@pytest.mark.xdist_group("gloo")
def test_a_rank_that_cannot_load_its_pipeline_fails_the_generator_with_its_traceback(tmp_path):
    config = ParallelConfig(method="distrifusion", world_size=2)
    with pytest.raises(RuntimeError, match=r"rank \d failed:(.|\n)*" + str(tmp_path / "missing")):
        with ParallelWorldGenerator(tmp_path / "missing", config, steps=4, timeout_s=300):
            pass


def test_a_parallel_generator_needs_two_ranks_and_to_be_entered():
    with pytest.raises(ValueError, match="world_size >= 2"):
        ParallelWorldGenerator(COMMITTED_WORLD / "large", ParallelConfig(), steps=4)
    generator = ParallelWorldGenerator(
        COMMITTED_WORLD / "large", ParallelConfig(method="distrifusion", world_size=2), steps=4
    )
    with pytest.raises(RuntimeError, match="enter"):
        generator(PROMPTS, SEEDS)


class CachedSceneGenerator:
    """A stand-in for the large model's DiffusionGenerator: full runs render the prompt's scene; the 'latents' of a
    cached run carry its cache index, so a resume renders the cached scene it was resumed from (whatever k)."""

    def __init__(self, world, scene_of, cache_index):
        self.world, self.scene_of, self.cache_index = world, scene_of, cache_index
        self.resumed_dtypes = set()

    def _render(self, prompt):
        return Image.fromarray(self.world.render(self.scene_of[prompt]))

    def txt2img_batch(self, reqs):
        return [self._render(r.prompt) for r in reqs]

    def txt2img_with_snapshots_batch(self, reqs, snapshot_steps):
        return [
            (self._render(r.prompt), {k: torch.tensor([[float(self.cache_index[r.prompt])]]) for k in snapshot_steps})
            for r in reqs
        ]

    def resume_batch(self, reqs, latents, steps_done):
        assert 0 < steps_done < reqs[0].steps
        self.resumed_dtypes |= {one.dtype for one in latents}
        cached_prompts = list(self.cache_index)
        return [self._render(cached_prompts[int(one.item())]) for one in latents]


def test_nirvana_replay_grades_the_cached_scene_a_hit_resumes_from_against_the_query():
    from modm.embedding.hf_clip import HfClipEmbedder
    from modm.world.judge import Judge

    world = World(seed=0)
    cache, queries = calibration_stream(24, 48, seed=1)
    scene_of = {prompt: scene for prompt, scene in cache} | {q.prompt: q.scene for q in queries}
    cache_index = {prompt: i for i, (prompt, _) in enumerate(cache)}
    generator = CachedSceneGenerator(world, scene_of, cache_index)
    device = torch.device("cpu")
    replay = nirvana_replay(
        cache,
        queries,
        generator=generator,
        total_steps=50,
        embedder=HfClipEmbedder(COMMITTED_WORLD / "clip", device=device, batch_size=64),
        judge=Judge.load(COMMITTED_WORLD / "judge", device),
        k_table=KTable.nirvana(50),
        k_choices=NIRVANA_K_CHOICES,
        scorer=HfClipEmbedder(COMMITTED_WORLD / "clip_score", device=device, batch_size=64),
        batch_size=10,
    )
    assert generator.resumed_dtypes == {torch.float16}  # what NIRVANA's latent cache stores
    assert replay.full_accuracy["all"] == 1.0  # the renderer answers every prompt
    assert set(replay.resumed_accuracy) == set(NIRVANA_K_CHOICES)
    # A resume shows the cached scene: right when the query rephrases it, wrong in an attribute when it varies it.
    by_k = {k: acc["all"] for k, acc in replay.resumed_accuracy.items()}
    assert len(set(by_k.values())) == 1 and 0.1 < by_k[5] < 0.9
    granted = replay.granted
    assert granted["hits"] == sum(score > 0.65 for score in replay.scores)  # NIRVANA's strict '>' at its last rule
    assert sum(granted["k_counts"].values()) == granted["hits"]
    assert granted["hit_accuracy"]["all"] < granted["full_accuracy"]["all"] == 1.0
    assert granted["hit_clip_score"] < granted["full_clip_score"]


def test_nirvana_replay_refuses_an_empty_cache():
    with pytest.raises(ValueError, match="non-empty"):
        nirvana_replay(
            [],
            [],
            generator=None,
            total_steps=50,
            embedder=None,
            judge=None,
            k_table=KTable.nirvana(50),
            k_choices=NIRVANA_K_CHOICES,
        )
