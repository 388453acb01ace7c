"""A transformers CLIP (`CLIPModel` + `CLIPProcessor` in one `save_pretrained` directory) as an embedder.

MoDM computed its k table with transformers' CLIP classes; the world CLIP (`modm world build`) is saved this way.
Same protocol as `OpenClipEmbedder`: batched, L2-normalised float32 numpy rows; text->image by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from modm.config.schema import Retrieval
from modm.embedding.embedder import _CacheKeys, _check_prompts, embed_in_batches, l2_normalise


def _pooled(output) -> torch.Tensor:
    """transformers 5 returns a model output from get_*_features (projection in pooler_output); older a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class HfClipEmbedder(_CacheKeys):
    def __init__(
        self,
        model: str | Path,
        *,
        device: torch.device,
        batch_size: int = 32,
        retrieval: Retrieval = Retrieval.TEXT_TO_IMAGE,
        dtype: torch.dtype = torch.float32,
    ):
        from transformers import CLIPModel, CLIPProcessor

        path = Path(model)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"hf_clip model {str(path)!r}: no config.json there (a CLIPModel save_pretrained directory is expected)"
            )
        # `dtype` whatever the stored one (the world CLIP is stored in fp16 to keep the repository small).
        self.model = CLIPModel.from_pretrained(path, dtype=dtype).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(path)
        self.context_length = int(self.model.config.text_config.max_position_embeddings)
        self.device = device
        self.batch_size = batch_size
        self.retrieval = retrieval
        self.dim = int(self.model.config.projection_dim)

    @torch.inference_mode()
    def embed_text(self, prompts: Sequence[str]) -> np.ndarray:
        def embed(chunk):
            batch = self.processor.tokenizer(
                chunk, padding=True, truncation=True, max_length=self.context_length, return_tensors="pt"
            )
            return l2_normalise(
                _pooled(
                    self.model.get_text_features(
                        input_ids=batch["input_ids"].to(self.device),
                        attention_mask=batch["attention_mask"].to(self.device),
                    )
                )
            )

        return embed_in_batches(_check_prompts(prompts), self.batch_size, self.dim, embed)

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        def embed(chunk):
            pixels = self.processor.image_processor([im.convert("RGB") for im in chunk], return_tensors="pt")[
                "pixel_values"
            ].to(self.device, self.model.dtype)
            return l2_normalise(_pooled(self.model.get_image_features(pixel_values=pixels)))

        return embed_in_batches(images, self.batch_size, self.dim, embed)
