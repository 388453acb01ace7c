"""The session model: temporal locality for prompt lists that have no timestamps or users.

Real DiffusionDB traffic is bursty per user: people resubmit a prompt, swap a word, add "trending on artstation".
A shuffled prompt list has none of that, so a cache would look useless on it. ``apply_session_model`` imposes it
explicitly (parameters in ``SessionConfig``, seeded, pure):

1. ``active_users`` sessions are open at once. A session takes the next unused prompt of the list as its base
   prompt and lasts ``1 + E`` requests, ``E ~ Geometric`` with mean ``mean_edits``.
2. Each request comes from an open session picked uniformly at random; a session's first request is its base
   prompt, every later one is an edit of its previous prompt (``EditKind``, drawn with ``edit_weights``).
3. A finished session is replaced by a new one on the next base prompt.

The output has as many requests as the input (fewer distinct base prompts are used), keeps the input's warm-up
count at the front, and is identical for the same seed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from modm.workload.config import EditKind, SessionConfig
from modm.workload.trace import TraceRequest, with_prompt

__all__ = ["apply_session_model", "edit_prompt"]

_WORD = re.compile(r"^[A-Za-z][A-Za-z'-]{2,}$")


def apply_session_model(trace: Sequence[TraceRequest], config: SessionConfig, seed: int) -> list[TraceRequest]:
    if not trace:
        return []
    rng = np.random.default_rng(seed)
    vocabulary = _vocabulary(trace)
    edit_kinds, edit_probs = _edit_distribution(config)
    stop_probability = 1.0 / (1.0 + config.mean_edits)  # geometric: mean follow-ups = (1 - p) / p = mean_edits

    bases = iter(trace)
    open_sessions: list[_Session] = []
    next_session = 0
    out: list[TraceRequest] = []
    n_warm = sum(r.warm_up for r in trace)
    while len(out) < len(trace):
        while len(open_sessions) < config.active_users:
            base = next(bases, None)
            if base is None:
                break
            follow_ups = int(rng.geometric(stop_probability)) - 1
            open_sessions.append(_Session(f"session-{next_session}", base, follow_ups))
            next_session += 1
        session = open_sessions[int(rng.integers(len(open_sessions)))]
        if session.sent == 0:
            prompt, kind = session.base.prompt, EditKind.BASE
        else:
            kind = edit_kinds[int(rng.choice(len(edit_kinds), p=edit_probs))]
            prompt, kind = edit_prompt(session.prompt, kind, rng, vocabulary, config.modifiers)
        session.prompt = prompt
        session.sent += 1
        out.append(
            with_prompt(
                session.base,
                prompt,
                user=session.base.user or session.name.replace("session", "user"),
                session=session.name,
                edit=kind.value,
                timestamp_s=None,
                warm_up=len(out) < n_warm,
            )
        )
        if session.sent > session.follow_ups:
            open_sessions.remove(session)
    return out


def edit_prompt(
    prompt: str,
    kind: EditKind,
    rng: np.random.Generator,
    vocabulary: Sequence[str],
    modifiers: Sequence[str],
) -> tuple[str, EditKind]:
    """Apply one edit; returns the new prompt and the edit actually made (an impossible edit adds a modifier)."""
    if kind is EditKind.REPEAT or kind is EditKind.BASE:
        return prompt, kind
    if kind is EditKind.WORD_SWAP:
        words = prompt.split(" ")
        positions = [i for i, w in enumerate(words) if _WORD.match(w.strip(",.;:"))]
        if positions and vocabulary:
            i = positions[int(rng.integers(len(positions)))]
            stripped = words[i].strip(",.;:")
            words[i] = words[i].replace(stripped, vocabulary[int(rng.integers(len(vocabulary)))])
            return " ".join(words), kind
    if kind is EditKind.DROP_CLAUSE:
        clauses = prompt.split(",")
        if len(clauses) > 1:
            return ",".join(clauses[:-1]).rstrip(), kind
    unused = [m for m in modifiers if m not in prompt]
    pool = unused or list(modifiers)
    modifier = pool[int(rng.integers(len(pool)))]
    return (f"{prompt}, {modifier}" if prompt else modifier), EditKind.ADD_MODIFIER


class _Session:
    __slots__ = ("name", "base", "follow_ups", "prompt", "sent")

    def __init__(self, name: str, base: TraceRequest, follow_ups: int) -> None:
        self.name = name
        self.base = base
        self.follow_ups = follow_ups
        self.prompt = base.prompt
        self.sent = 0


def _vocabulary(trace: Sequence[TraceRequest]) -> list[str]:
    """Distinct plain words of the prompts, sorted so that the same trace gives the same vocabulary."""
    words = {w.strip(",.;:").lower() for r in trace for w in r.prompt.split()}
    return sorted(w for w in words if _WORD.match(w))


def _edit_distribution(config: SessionConfig) -> tuple[list[EditKind], np.ndarray]:
    w = config.edit_weights
    kinds = [EditKind.REPEAT, EditKind.WORD_SWAP, EditKind.ADD_MODIFIER, EditKind.DROP_CLAUSE]
    weights = np.array([w.repeat, w.word_swap, w.add_modifier, w.drop_clause], dtype=float)
    return kinds, weights / weights.sum()
