"""Configs of the three model-backed metrics. Constructing one never loads weights or touches a device."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from modm.config.schema import Device, EmbedderConfig, EmbedderKind

__all__ = ["ClipScoreConfig", "FeatureDims", "InceptionConfig", "InceptionWeights", "PickScoreConfig"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class _OnDevice(_Strict):
    device: Device = Field(default="auto", description="'auto' (cuda if available), 'cpu', 'cuda' or 'cuda:N'.")


class ClipScoreConfig(_OnDevice):
    """CLIPScore through the project's open_clip embedder (MoDM: CLIP ViT-L/14, OpenAI weights)."""

    model: str = Field(
        default="ViT-L-14", description="open_clip architecture name (ViT-L-14) or 'local-dir:<path>' of a saved model."
    )
    pretrained: str | None = Field(
        default="openai", description="open_clip pretrained tag or checkpoint file; ignored for local-dir."
    )
    batch_size: int = Field(default=32, gt=0, le=4096, description="Largest batch per forward pass.")
    quick_gelu: bool | None = Field(
        default=None,
        description="QuickGELU (True) or GELU (False); None: what the pretrained tag's weights were trained with "
        "(QuickGELU for OpenAI's ViT-L/14). A value that disagrees with the tag is refused.",
    )

    def embedder_config(self) -> EmbedderConfig:
        return EmbedderConfig(
            kind=EmbedderKind.OPEN_CLIP,
            model=self.model,
            pretrained=self.pretrained,
            device=self.device,
            batch_size=self.batch_size,
            quick_gelu=self.quick_gelu,
        )


class PickScoreConfig(_OnDevice):
    """PickScore: a CLIP-H fine-tuned on human preferences, loaded with transformers' CLIPModel."""

    model: str = Field(default="yuvalkirstain/PickScore_v1", description="Hub id or local CLIPModel directory.")
    processor: str = Field(
        default="laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        description="Hub id or local directory of the CLIPProcessor (PickScore uses CLIP-H's).",
    )
    batch_size: int = Field(default=16, gt=0, le=4096, description="Largest batch per forward pass.")


class InceptionWeights(str, Enum):
    IMAGENET1K_V1 = "IMAGENET1K_V1"  # torchvision's Inception_V3_Weights (torchvision fetches them to its cache)
    FILE = "file"  # a local torchvision Inception3 state dict (.pth/.pt/.safetensors)
    RANDOM = "random"  # seeded random init: tests and plumbing only, the scores mean nothing


class FeatureDims(int, Enum):
    """Inception-v3 feature layers, as pytorch_fid's --dims: 2048 (final pool) is the standard FID."""

    POOL1 = 64  # after the first max pool
    POOL2 = 192  # after the second max pool
    MIXED_6E = 768  # input of the auxiliary classifier
    POOL3 = 2048  # final average pool


class InceptionConfig(_OnDevice):
    """Inception-v3 for the Inception Score (class probabilities) and FID (pool features)."""

    weights: InceptionWeights = Field(
        default=InceptionWeights.IMAGENET1K_V1,
        description="IMAGENET1K_V1 (torchvision), file (a local state dict at `path`) or random (seeded; tests only).",
    )
    path: Path | None = Field(default=None, description="State-dict file when weights is 'file'.")
    seed: int = Field(default=0, ge=0, description="Seed of the random init when weights is 'random'.")
    dims: FeatureDims = Field(default=FeatureDims.POOL3, description="Feature layer for FID (2048 = standard).")
    batch_size: int = Field(default=32, gt=0, le=4096, description="Largest batch per forward pass.")

    @model_validator(mode="after")
    def _path_iff_file(self) -> "InceptionConfig":
        if self.weights is InceptionWeights.FILE and self.path is None:
            raise ValueError("inception weights 'file' need a path to a state dict")
        if self.weights is not InceptionWeights.FILE and self.path is not None:
            raise ValueError(f"a weights path is only used with weights 'file', not {self.weights.value!r}")
        return self

    @property
    def extractor_id(self) -> str:
        """Names the feature space, stored with reference statistics so mismatched stats are refused."""
        source = {
            InceptionWeights.FILE: f"file:{self.path.name if self.path else ''}",
            InceptionWeights.RANDOM: f"random:{self.seed}",
        }.get(self.weights, self.weights.value)
        return f"torchvision-inception-v3/{source}/{int(self.dims)}"
