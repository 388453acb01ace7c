from modm.embedding.embedder import (
    Embedder,
    MiniLMEmbedder,
    OpenClipEmbedder,
    build_embedder,
    embedding_dim,
    l2_normalise,
)

__all__ = ["Embedder", "MiniLMEmbedder", "OpenClipEmbedder", "build_embedder", "embedding_dim", "l2_normalise"]
