"""The serving side of NIRVANA's latent cache: payloads follow their entries, bad input is named."""

import numpy as np
import pytest

from modm.cache.latent_cache import LatentCache
from modm.policy import NIRVANA_K_CHOICES, KTable


def _unit(*values):
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def _payloads(tag):
    return {k: f"{tag}@{k}" for k in NIRVANA_K_CHOICES}


def test_hit_returns_the_payload_of_the_largest_allowed_k():
    cache = LatentCache(3, capacity_prompts=4, k_table=KTable.nirvana(50))
    pid = cache.insert(_unit(1, 0, 0), _payloads("a"))
    decision, match = cache.lookup(_unit(1, 0, 0))  # cosine 1.0 > 0.95: k = 25
    assert decision.hit and decision.k == 25 and match.prompt_id == pid and match.payload == "a@25"
    decision, match = cache.lookup(_unit(1, 0.45, 0))  # cosine ~0.91: k <= 20
    assert decision.k == 20 and match.payload == "a@20"
    decision, match = cache.lookup(_unit(0, 1, 0))
    assert not decision.hit and match is None
    assert cache.entries_of(pid) == {5: 0, 10: 0, 15: 0, 20: 1, 25: 1}


def test_eviction_drops_payloads_with_their_entries():
    cache = LatentCache(3, capacity_prompts=1, k_table=KTable.nirvana(50))
    first = cache.insert(_unit(1, 0, 0), _payloads("a"))
    cache.lookup(_unit(1, 0, 0))  # f(first, 25) = 1: evicting it costs more than the others
    second = cache.insert(_unit(0, 1, 0), _payloads("b"))
    assert first not in cache and second in cache and len(cache) == len(NIRVANA_K_CHOICES)
    assert len(cache._payloads) == len(NIRVANA_K_CHOICES)
    decision, match = cache.lookup(_unit(1, 0, 0))
    assert not decision.hit


def test_bad_input_is_named():
    cache = LatentCache(3, capacity_prompts=2, k_table=KTable.nirvana(50))
    with pytest.raises(ValueError, match="4 dimensions, the cache holds 3"):
        cache.insert(np.ones(4, dtype=np.float32))
    with pytest.raises(ValueError, match="cover k"):
        cache.insert(_unit(1, 0, 0), {5: "x"})
    pid = cache.insert(_unit(1, 0, 0))
    with pytest.raises(ValueError, match="already cached"):
        cache.insert(_unit(0, 1, 0), prompt_id=pid)
    with pytest.raises(ValueError, match="capacity"):
        LatentCache(3, capacity_prompts=0, k_table=KTable.nirvana(50))
    with pytest.raises(ValueError, match="k_choices"):
        LatentCache(3, capacity_prompts=1, k_table=KTable.nirvana(30), k_choices=(5, 30))
