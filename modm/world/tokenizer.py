"""A small CLIP BPE tokenizer for the world's captions, built offline.

It keeps the 512 byte tokens of OpenAI's CLIP BPE and, in their original order, only the merges that the world's
words use. BPE applies the lowest-ranked merge present, so dropping merges that never fire leaves the segmentation
of the world's words exactly as CLIP's; an unknown word still tokenizes (into shorter pieces, down to bytes). The
vocabulary shrinks from 49,408 to a few hundred entries, which keeps the trained token embeddings small.
"""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

from open_clip.tokenizer import bytes_to_unicode, default_bpe

from modm.world.captions import vocabulary

WORLD_CONTEXT_LENGTH = 40  # the longest world caption is about 30 tokens with its start and end tokens
_N_MERGES = 49152 - 256 - 2  # as in open_clip's SimpleTokenizer


def _clip_merges() -> list[tuple[str, str]]:
    with gzip.open(default_bpe()) as f:
        lines = f.read().decode("utf-8").split("\n")
    return [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]


def _merges_used(word: str, ranks: dict[tuple[str, str], int]) -> list[tuple[str, str]]:
    """The merges BPE applies to `word` (CLIP's end-of-word marker on its last symbol)."""
    byte_encoder = bytes_to_unicode()
    symbols = [byte_encoder[b] for b in word.encode("utf-8")]
    symbols[-1] += "</w>"
    used = []
    while len(symbols) > 1:
        pairs = set(itertools.pairwise(symbols))
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        used.append(best)
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return used


def write_world_bpe_files(out_dir: str | Path, words: set[str] | None = None) -> tuple[Path, Path]:
    """vocab.json and merges.txt for CLIPTokenizer, restricted to `words` (default: the world's vocabulary)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    merges = _clip_merges()
    ranks = {m: i for i, m in enumerate(merges)}
    used: set[tuple[str, str]] = set()
    for word in sorted(words if words is not None else vocabulary()):
        used.update(_merges_used(word.lower(), ranks))
    kept = [m for m in merges if m in used]
    byte_tokens = list(bytes_to_unicode().values())
    vocab = byte_tokens + [t + "</w>" for t in byte_tokens] + ["".join(m) for m in kept]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    vocab_path, merges_path = out_dir / "vocab.json", out_dir / "merges.txt"
    vocab_path.write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    merges_path.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in kept) + "\n", encoding="utf-8")
    return vocab_path, merges_path


def build_world_tokenizer(work_dir: str | Path):
    """A transformers CLIPTokenizer over the world's vocabulary; work_dir receives the BPE files."""
    from transformers import CLIPTokenizer

    vocab_path, merges_path = write_world_bpe_files(work_dir)
    return CLIPTokenizer(str(vocab_path), str(merges_path), model_max_length=WORLD_CONTEXT_LENGTH)
