"""Embedder: prompt and image embeddings for retrieval, batched across concurrent requests with serve.batch."""

from __future__ import annotations

import asyncio
import io

import numpy as np
from PIL import Image
from ray import serve

from deployments.constants import EMBED_BATCH_WAIT_S, EMBED_MAX_BATCH
from modm.config import EmbedderConfig
from modm.embedding import build_embedder


class EmbedderServer:
    def __init__(self, config: dict):
        self.config = EmbedderConfig.model_validate(config)
        self.embedder = build_embedder(self.config)

    @serve.batch(max_batch_size=EMBED_MAX_BATCH, batch_wait_timeout_s=EMBED_BATCH_WAIT_S)
    async def embed_text(self, prompts: list[str]) -> list[np.ndarray]:
        """One prompt per call; Serve batches concurrent calls into one forward pass. Returns (dim,) float32."""
        vectors = await asyncio.to_thread(self.embedder.embed_text, prompts)
        return list(vectors)

    async def embed_for_cache(self, png: bytes, prompt: str) -> np.ndarray:
        """The cache key of a generated image: its image embedding, or its prompt's in text->text mode."""
        image = Image.open(io.BytesIO(png))
        vectors = await asyncio.to_thread(self.embedder.embed_for_cache, [image], [prompt])
        return vectors[0]

    def info(self) -> dict:
        return {"dim": self.embedder.dim, "retrieval": self.embedder.retrieval.value, "kind": self.config.kind.value}

    def check_health(self) -> None:
        if self.embedder.embed_text(["health check"]).shape != (1, self.embedder.dim):
            raise RuntimeError("embedder returned a wrong shape")
