"""CLIPScore: 100 x max(cos(image embedding, text embedding), 0).

The clamp at 0 is the standard definition (Hessel et al. 2021; torchmetrics' CLIPScore). MoDM's
`calculate_clip_dir.py` reads the diagonal of open_clip's `logits_per_image` for ViT-L/14, which is
logit_scale (100 for OpenAI's CLIP) x cosine without the clamp; the two agree whenever the cosine is positive,
which it is for any real image and prompt. Embeddings come from the project's `OpenClipEmbedder`; its open_clip
preprocessing resizes and centre-crops every image to the model's input size, so image sizes may differ.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from modm.embedding import OpenClipEmbedder
from modm.models.loading import resolve_device
from modm.quality.config import ClipScoreConfig
from modm.quality.errors import QualityInputError

__all__ = ["ClipScorer", "CLIP_SCORE_SCALE", "clip_score_from_embeddings", "row_cosines"]

CLIP_SCORE_SCALE = 100.0


def row_cosines(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """Cosine of each image row with the text row at the same position, in float64; rows need not be unit."""
    a = np.asarray(image_embeddings, dtype=np.float64)
    b = np.asarray(text_embeddings, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise QualityInputError(f"need two (n, dim) embedding arrays of one shape, got {a.shape} and {b.shape}")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
        raise QualityInputError(f"zero or non-finite embeddings at rows {bad[:5].tolist()}: cosine undefined")
    return np.einsum("nd,nd->n", a, b) / norms


def clip_score_from_embeddings(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """(n,) CLIPScores of n matched (image, prompt) embedding pairs."""
    return CLIP_SCORE_SCALE * np.maximum(row_cosines(image_embeddings, text_embeddings), 0.0)


class ClipScorer:
    """Scores (image, prompt) pairs with an open_clip model (ViT-L/14 OpenAI weights by default)."""

    name = "clip"

    def __init__(self, embedder: OpenClipEmbedder):
        self.embedder = embedder

    @classmethod
    def from_config(cls, cfg: ClipScoreConfig, *, device: torch.device | None = None) -> "ClipScorer":
        device = device or resolve_device(cfg.device)
        return cls(
            OpenClipEmbedder(
                cfg.model,
                cfg.pretrained,
                device=device,
                batch_size=cfg.batch_size,
                quick_gelu=cfg.quick_gelu,
                field="clip",
            )
        )

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        if len(images) != len(prompts):
            raise QualityInputError(f"{len(images)} images but {len(prompts)} prompts")
        return clip_score_from_embeddings(self.embedder.embed_images(images), self.embedder.embed_text(prompts))
