"""Embedder: prompt and image embeddings for retrieval. Concurrent prompts share forward passes without waiting for
each other (modm.serving.coalescing): Serve's batch wait would delay every request at low load."""

from __future__ import annotations

from modm.config import EmbedderConfig
from modm.embedding import build_embedder
from modm.serving.services import EmbedderService


class EmbedderServer(EmbedderService):
    def __init__(self, config: dict):
        self.config = EmbedderConfig.model_validate(config)
        super().__init__(build_embedder(self.config), max_batch=self.config.batch_size)

    def info(self) -> dict:
        return {**super().info(), "kind": self.config.kind.value}

    def check_health(self) -> None:
        if self.embedder.embed_text(["health check"]).shape != (1, self.embedder.dim):
            raise RuntimeError("embedder returned a wrong shape")
