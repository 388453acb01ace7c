"""Embedder: prompt and image embeddings for retrieval, batched across concurrent requests with serve.batch."""

from __future__ import annotations

import numpy as np
from ray import serve

from deployments.constants import EMBED_BATCH_WAIT_S, EMBED_MAX_BATCH
from modm.config import EmbedderConfig
from modm.embedding import build_embedder
from modm.serving.services import EmbedderService


class EmbedderServer(EmbedderService):
    def __init__(self, config: dict):
        self.config = EmbedderConfig.model_validate(config)
        super().__init__(build_embedder(self.config))

    @serve.batch(max_batch_size=EMBED_MAX_BATCH, batch_wait_timeout_s=EMBED_BATCH_WAIT_S)
    async def embed_text(self, prompts: list[str]) -> list[np.ndarray]:
        """One prompt per call; Serve batches concurrent calls into one forward pass. Returns (dim,) float32."""
        return await self.embed_texts(prompts)

    def info(self) -> dict:
        return {**super().info(), "kind": self.config.kind.value}

    def check_health(self) -> None:
        if self.embedder.embed_text(["health check"]).shape != (1, self.embedder.dim):
            raise RuntimeError("embedder returned a wrong shape")
