"""The session model: determinism by seed, the locality it creates, and what each edit does."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from modm.workload.config import EditKind, SessionConfig, TraceConfig
from modm.workload.readers import load_trace
from modm.workload.sessions import apply_session_model
from modm.workload.config import EditWeights
from modm.workload.sessions import edit_prompt

from trace_samples import DIFFUSIONDB_SAMPLE as SHARED_TSV


@pytest.fixture(scope="module")
def prompts():
    return load_trace(TraceConfig(path=SHARED_TSV, n_requests=600, warm_up=100, start_row=100))


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def _best_recent_similarity(trace, window: int) -> float:
    """Mean over requests of the best word-overlap (Jaccard) with any of the previous ``window`` requests."""
    words = [_words(r.prompt) for r in trace]
    best = [
        max((len(w & p) / len(w | p) for p in words[max(0, i - window) : i]), default=0.0)
        for i, w in enumerate(words)
        if i > 0
    ]
    return float(np.mean(best))


def test_same_seed_same_workload_other_seed_another(prompts):
    config = SessionConfig()
    a = apply_session_model(prompts, config, seed=5)
    assert a == apply_session_model(prompts, config, seed=5)
    b = apply_session_model(prompts, config, seed=6)
    assert [r.prompt for r in a] != [r.prompt for r in b]


def test_shape_sessions_and_warm_up_count(prompts):
    config = SessionConfig(active_users=6, mean_edits=3.0)
    out = apply_session_model(prompts, config, seed=0)
    assert len(out) == len(prompts)
    assert sum(r.warm_up for r in out) == 100 and all(r.warm_up for r in out[:100])
    sessions = Counter(r.session for r in out)
    # Geometric follow-ups with mean 3: about 700 / 4 sessions (the last few are cut short).
    assert len(out) / len(sessions) == pytest.approx(1 + config.mean_edits, rel=0.15)
    firsts = {}
    for r in out:
        firsts.setdefault(r.session, r)
    assert all(r.edit == EditKind.BASE.value for r in firsts.values())
    opened = sorted(firsts.values(), key=lambda r: int(r.session.split("-")[1]))
    bases = [r.prompt for r in opened]
    assert bases == [p.prompt for p in prompts[: len(bases)]]  # sessions take base prompts in list order
    assert all(r.user is not None and r.timestamp_s is None for r in out)


def test_interleaving_window_is_bounded_by_active_users(prompts):
    config = SessionConfig(active_users=4, mean_edits=4.0)
    out = apply_session_model(prompts, config, seed=1)
    last_seen, gaps = {}, []
    for i, r in enumerate(out):
        if r.session in last_seen:
            gaps.append(i - last_seen[r.session])
        last_seen[r.session] = i
    gaps = np.array(gaps)
    assert np.mean(gaps) == pytest.approx(config.active_users, rel=0.25)  # each of 4 open sessions picked 1/4
    assert np.mean(gaps <= 4 * config.active_users) > 0.95


def test_sessions_create_temporal_locality_that_a_plain_list_lacks(prompts):
    out = apply_session_model(prompts, SessionConfig(active_users=8, mean_edits=3.0), seed=2)
    with_sessions = _best_recent_similarity(out, window=32)
    plain = _best_recent_similarity(prompts, window=32)
    assert with_sessions > 0.6 > 0.3 > plain
    exact_repeats = sum(r.edit == EditKind.REPEAT.value for r in out)
    assert exact_repeats / len(out) == pytest.approx(0.25 * 3 / 4, abs=0.06)  # weight 0.25 of follow-ups


def test_edits_do_what_they_say():
    rng = np.random.default_rng(0)
    vocabulary = ["dragon", "castle"]
    modifiers = ("8k", "octane render")
    prompt = "a small cat, oil painting, by monet"
    assert edit_prompt(prompt, EditKind.REPEAT, rng, vocabulary, modifiers) == (prompt, EditKind.REPEAT)
    dropped, kind = edit_prompt(prompt, EditKind.DROP_CLAUSE, rng, vocabulary, modifiers)
    assert (dropped, kind) == ("a small cat, oil painting", EditKind.DROP_CLAUSE)
    added, kind = edit_prompt(prompt, EditKind.ADD_MODIFIER, rng, vocabulary, modifiers)
    assert kind is EditKind.ADD_MODIFIER and added.startswith(prompt + ", ") and added[len(prompt) + 2 :] in modifiers
    swapped, kind = edit_prompt(prompt, EditKind.WORD_SWAP, rng, vocabulary, modifiers)
    before, after = prompt.split(" "), swapped.split(" ")
    assert kind is EditKind.WORD_SWAP and len(before) == len(after)
    changed = [(b, a) for b, a in zip(before, after) if b != a]
    assert len(changed) == 1 and changed[0][1].strip(",") in vocabulary
    # An edit that cannot apply falls back to adding a modifier.
    assert edit_prompt("cat", EditKind.DROP_CLAUSE, rng, vocabulary, modifiers)[1] is EditKind.ADD_MODIFIER


def test_no_edits_means_every_prompt_once(prompts):
    out = apply_session_model(prompts, SessionConfig(mean_edits=0.0), seed=3)
    assert all(r.edit == EditKind.BASE.value for r in out)
    assert sorted(r.source_row for r in out) == sorted(r.source_row for r in prompts)
    with pytest.raises(ValidationError, match="all zero"):
        EditWeights(repeat=0, word_swap=0, add_modifier=0, drop_clause=0)
