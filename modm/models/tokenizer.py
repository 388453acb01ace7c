"""An offline CLIP BPE tokenizer for the transformers text encoders of the tiny zoo.

open_clip ships OpenAI's BPE merges (`bpe_simple_vocab_16e6.txt.gz`); we derive the `vocab.json` / `merges.txt` pair
that `transformers.CLIPTokenizer` reads, with the same algorithm as `open_clip.tokenizer.SimpleTokenizer`, so token
ids match open_clip's and no hub download is needed.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

CLIP_VOCAB_SIZE = 49408
CLIP_CONTEXT_LENGTH = 77
_N_MERGES = 49152 - 256 - 2  # as in open_clip's SimpleTokenizer


def write_clip_bpe_files(out_dir: str | Path) -> tuple[Path, Path]:
    """Write vocab.json and merges.txt for CLIPTokenizer into out_dir; returns their paths."""
    # Imported here so that `modm.models` imports without open_clip (benchmarks/gpu_check.py on a bare GPU machine).
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]
    byte_tokens = list(bytes_to_unicode().values())
    vocab = byte_tokens + [t + "</w>" for t in byte_tokens] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise RuntimeError(f"derived CLIP vocabulary has {len(vocab)} entries, expected {CLIP_VOCAB_SIZE}")
    vocab_path, merges_path = out_dir / "vocab.json", out_dir / "merges.txt"
    vocab_path.write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    merges_path.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    return vocab_path, merges_path


def build_clip_tokenizer(work_dir: str | Path):
    """A transformers CLIPTokenizer (77 tokens) built offline; work_dir receives the BPE files."""
    from transformers import CLIPTokenizer

    vocab_path, merges_path = write_clip_bpe_files(work_dir)
    # model_max_length must be explicit: the default (1e30) breaks padding="max_length".
    return CLIPTokenizer(str(vocab_path), str(merges_path), model_max_length=CLIP_CONTEXT_LENGTH)
