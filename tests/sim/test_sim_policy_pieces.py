"""The simulator's pure pieces: profiles, the parametric hit model, the FIFO cache, NIRVANA's LCBFU."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modm.cache.index import NamespaceIndex
from modm.config.schema import Admission
from modm.policy.tables import MINILM_TEXT_TABLE
from modm.policy import KTable, RetrievalDecision
from modm.roles import ModelRole
from modm.sim import (
    BUILTIN_PROFILES,
    FifoImageCache,
    LatencyProfile,
    NirvanaLatentCache,
    ParametricHits,
    resolve_profile,
)

from sim_workloads import clustered_embeddings


# ----------------------------------------------------------------------------------------------------- profiles
def test_refinement_costs_the_remaining_fraction_of_a_generation():
    mi210 = BUILTIN_PROFILES["mi210"]
    assert mi210.service_s(ModelRole.LARGE, 0, 50) == pytest.approx(91.5)
    assert mi210.service_s(ModelRole.SMALL, 30, 50) == pytest.approx(0.4 * 16.5)
    a40 = BUILTIN_PROFILES["a40"]
    assert a40.full_s(ModelRole.SMALL) == pytest.approx(60.0 / (91.5 / 16.5))  # derived by the MI210 ratio
    with_fixed = LatencyProfile(gpu="cpu", full_generation_s={"large": 10.0, "small": 2.0}, fixed_s={"small": 1.0})
    assert with_fixed.service_s(ModelRole.SMALL, 25, 50) == pytest.approx(1.0 + 0.5 * 1.0)


def test_json_profile_round_trip_and_bad_profiles(tmp_path):
    path = tmp_path / "measured.json"
    path.write_text(json.dumps({"gpu": "cpu", "full_generation_s": {"large": 3.1, "small": 0.6}, "router_s": 0.02}))
    profile = resolve_profile(path)
    assert profile.full_s(ModelRole.LARGE) == 3.1 and profile.router_s == 0.02
    assert profile.throughput().large_per_min == pytest.approx(60 / 3.1)
    path.write_text(json.dumps({"gpu": "cpu", "full_generation_s": {"small": 0.6}}))
    with pytest.raises(ValueError, match="'large' entry"):
        resolve_profile(path)
    path.write_text(json.dumps({"gpu": "cpu", "full_generation_s": {"large": 1.0}, "fixed_s": {"large": 2.0}}))
    with pytest.raises(ValueError, match="exceeds"):
        resolve_profile(path)
    with pytest.raises(ValueError, match="unknown latency profile"):
        resolve_profile("h100-imaginary")


# ---------------------------------------------------------------------------------------------- parametric hits
def test_parametric_hit_model_draws_the_configured_rates():
    n, hit_rate, mix = 40_000, 0.65, {5: 1.0, 15: 2.0, 30: 1.0}
    model = ParametricHits(n, hit_rate, mix, 50, np.random.default_rng(3))
    decisions = [model.decide(i) for i in range(n)]
    hits = [d for d in decisions if d.hit]
    assert abs(len(hits) / n - hit_rate) < 4 * np.sqrt(hit_rate * (1 - hit_rate) / n)
    for k, weight in mix.items():
        share = sum(d.k == k for d in hits) / len(hits)
        expected = weight / sum(mix.values())
        assert abs(share - expected) < 4 * np.sqrt(expected * (1 - expected) / len(hits))
    assert all(d.strength == pytest.approx(1 - d.k / 50) for d in hits[:50])
    assert not any(
        d.hit for d in (ParametricHits(100, 0.0, {}, 50, np.random.default_rng(0)).decide(i) for i in range(100))
    )
    with pytest.raises(ValueError, match="in \\(0, 50\\)"):
        ParametricHits(10, 0.5, {50: 1.0}, 50, np.random.default_rng(0))


# ------------------------------------------------------------------------------------------------- FIFO cache
def test_fifo_cache_matches_the_live_index_and_evicts_the_oldest():
    emb = clustered_embeddings(300, n_topics=40, seed=1)
    cache = FifoImageCache(emb, capacity=50, k_table=KTable(MINILM_TEXT_TABLE, 50), admission=Admission.CACHE_ALL)
    reference = NamespaceIndex(
        emb.shape[1],
        hnsw_min_entries=10_000,
        hnsw_exit_entries=9_000,
        hnsw_m=16,
        hnsw_ef_search=32,
        hnsw_ef_construction=40,
        tombstone_rebuild_fraction=0.25,
    )
    order: list[int] = []
    for i in range(300):
        score, _ = cache.top1(i)
        ref_scores, _ = reference.search(emb[i : i + 1])
        if order:
            assert score == pytest.approx(float(ref_scores[0]), abs=1e-5)
        else:
            assert score is None
        cache.complete(i, cache.decide(i), from_large_model=True)
        order.append(i)
        reference.add(np.array([i]), emb[i : i + 1])
        if len(order) > 50:
            reference.remove([order.pop(0)])
    assert cache.cached_requests() == order
    assert len(cache) == 50 and cache.evicted == 250


def test_cache_large_admits_only_full_generations_of_the_large_model():
    emb = clustered_embeddings(3, n_topics=1)
    cache = FifoImageCache(emb, capacity=10, k_table=KTable(MINILM_TEXT_TABLE, 50), admission=Admission.CACHE_LARGE)
    hit = RetrievalDecision(hit=True, k=30, strength=0.4, score=0.99)
    cache.complete(0, hit, from_large_model=True)  # a hit refined by a large replica (quality mode)
    cache.complete(1, hit, from_large_model=False)
    assert len(cache) == 0
    cache.complete(2, RetrievalDecision.miss(), from_large_model=True)
    assert cache.cached_requests() == [2]


# ---------------------------------------------------------------------------------------------------- NIRVANA
def _nirvana(emb, capacity_prompts):
    return NirvanaLatentCache(emb, capacity_prompts, KTable.nirvana(50), record_evictions=True)


def test_nirvana_lcbfu_evicts_unused_and_small_k_entries_first():
    emb = np.eye(8, dtype=np.float32)  # prompts 0, 1, 2 are unrelated to each other
    emb[3] = emb[0]  # request 3 repeats prompt 0 (cosine 1 -> k up to 25)
    cache = _nirvana(emb, capacity_prompts=2)
    for prompt in (0, 1):
        cache.complete(prompt, RetrievalDecision.miss(), from_large_model=True)
    assert len(cache) == 10
    decision = cache.decide(3)
    assert decision.hit and decision.k == 25 and cache.entries_of(0)[25] == 1
    cache.complete(2, RetrievalDecision.miss(), from_large_model=True)  # no room for 5 more: evict
    # Score f*k: prompt 0's k=25 entry scores 25, everything else 0. Ties: the older prompt first, then smaller k;
    # eviction stops once a prompt has lost all of its entries (prompt 1).
    assert cache.eviction_log == [(0, 5), (0, 10), (0, 15), (0, 20), (1, 5), (1, 10), (1, 15), (1, 20), (1, 25)]
    assert cache.prompts() == [0, 2] and cache.entries_of(0) == {25: 1} and len(cache) == 6
    assert not cache.decide(1).hit  # prompt 1 left the index with its last entry


def test_nirvana_hit_needs_an_entry_no_deeper_than_the_similarity_allows():
    emb = np.zeros((3, 4), dtype=np.float32)
    emb[0] = [1, 0, 0, 0]
    emb[1] = [0.8, 0.6, 0, 0]  # cosine 0.8 with prompt 0: NIRVANA allows k <= 10
    emb[2] = [0, 0, 1, 0]
    cache = _nirvana(emb, capacity_prompts=4)
    cache.complete(0, RetrievalDecision.miss(), from_large_model=True)
    decision = cache.decide(1)
    assert decision.hit and decision.k == 10 and decision.score == pytest.approx(0.8)
    assert not cache.decide(2).hit
