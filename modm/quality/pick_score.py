"""PickScore (Kirstain et al. 2023): exp(logit_scale) x cos(image, text) under the PickScore_v1 CLIP-H model.

The model is transformers' `CLIPModel` (`yuvalkirstain/PickScore_v1`) with the CLIP-H processor
(`laion/CLIP-ViT-H-14-laion2B-s32B-b79K`), as in MoDM's `pick_score.py`. The processor resizes and centre-crops
every image to 224 px, so image sizes may differ. Unlike CLIPScore there is no clamp: a PickScore is a logit.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from modm.models.loading import ModelLoadError, resolve_device
from modm.quality.clip_score import row_cosines
from modm.quality.config import PickScoreConfig
from modm.quality.errors import QualityInputError

__all__ = ["PickScorer", "pick_score_from_embeddings"]


def pick_score_from_embeddings(
    image_embeddings: np.ndarray, text_embeddings: np.ndarray, logit_scale: float
) -> np.ndarray:
    """(n,) PickScores of matched pairs; `logit_scale` is the model's log-scale parameter (exp is applied here)."""
    if not math.isfinite(logit_scale):
        raise QualityInputError(f"logit_scale={logit_scale} is not finite")
    return math.exp(logit_scale) * row_cosines(image_embeddings, text_embeddings)


def _projected(output) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output holds the projection; 4.x returned the tensor.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class PickScorer:
    name = "pick"

    def __init__(self, model, processor, *, device: torch.device, batch_size: int = 16):
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = device
        self.batch_size = batch_size

    @classmethod
    def from_config(cls, cfg: PickScoreConfig, *, device: torch.device | None = None) -> "PickScorer":
        from transformers import AutoProcessor, CLIPModel

        device = device or resolve_device(cfg.device)
        try:
            processor = AutoProcessor.from_pretrained(cfg.processor)
            model = CLIPModel.from_pretrained(cfg.model)
        except OSError as err:
            raise ModelLoadError(
                f"cannot load PickScore model {cfg.model!r} / processor {cfg.processor!r}: {err}"
            ) from None
        return cls(model, processor, device=device, batch_size=cfg.batch_size)

    @torch.inference_mode()
    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        if len(images) != len(prompts):
            raise QualityInputError(f"{len(images)} images but {len(prompts)} prompts")
        scores = []
        for start in range(0, len(images), self.batch_size):
            chunk_images = [im.convert("RGB") for im in images[start : start + self.batch_size]]
            chunk_prompts = list(prompts[start : start + self.batch_size])
            pixels = self.processor(images=chunk_images, return_tensors="pt")["pixel_values"].to(self.device)
            text = self.processor(text=chunk_prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
            image_emb = _projected(self.model.get_image_features(pixel_values=pixels))
            text_emb = _projected(
                self.model.get_text_features(
                    input_ids=text["input_ids"].to(self.device), attention_mask=text["attention_mask"].to(self.device)
                )
            )
            scores.append(
                pick_score_from_embeddings(
                    image_emb.float().cpu().numpy(),
                    text_emb.float().cpu().numpy(),
                    float(self.model.logit_scale.item()),
                )
            )
        return np.concatenate(scores) if scores else np.zeros(0, np.float64)
