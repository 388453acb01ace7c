from modm.embedding.embedder import Embedder, MiniLMEmbedder, OpenClipEmbedder, build_embedder, l2_normalise

__all__ = ["Embedder", "MiniLMEmbedder", "OpenClipEmbedder", "build_embedder", "l2_normalise"]
