"""Inception-v3 features (for FID) and class logits (for the Inception Score) from torchvision's `Inception3`.

Input handling: each RGB image is scaled to [0, 1], resized to 299 x 299 with bilinear interpolation (aspect ratio
not kept, as in pytorch_fid, so images of any size can be mixed) and normalised with the ImageNet mean and std that
torchvision's weights expect (`transform_input=True` maps that back to the [-1, 1] range the original weights use).

Comparability: torchvision's IMAGENET1K_V1 weights are not the TF "FID Inception" weights of pytorch_fid/TTUR, so
absolute FIDs differ from published ones (MoDM used pytorch_fid). Compare systems against each other with the same
extractor; the extractor's id is stored with reference statistics so stats from another one are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from modm.models.loading import ModelLoadError, resolve_device
from modm.quality.config import FeatureDims, InceptionConfig, InceptionWeights
from modm.quality.errors import QualityInputError

__all__ = ["INCEPTION_INPUT_SIZE", "InceptionFeatureExtractor", "InceptionOutputs", "build_inception"]

INCEPTION_INPUT_SIZE = 299
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# The module whose output is each feature layer (pytorch_fid's block boundaries in torchvision's names).
_FEATURE_MODULE = {
    FeatureDims.POOL1: "maxpool1",
    FeatureDims.POOL2: "maxpool2",
    FeatureDims.MIXED_6E: "Mixed_6e",
    FeatureDims.POOL3: "avgpool",
}


@dataclass(frozen=True)
class InceptionOutputs:
    features: np.ndarray  # (n, dims) float64 pooled activations, for FID
    logits: np.ndarray  # (n, classes) float64 class logits, for the Inception Score


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelLoadError(f"inception weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise ModelLoadError(f"cannot read inception weights {path}: {err}") from None


def build_inception(cfg: InceptionConfig) -> torch.nn.Module:
    """torchvision Inception3 in eval mode with the configured weights (on CPU)."""
    from torchvision.models import Inception3, Inception_V3_Weights, inception_v3

    if cfg.weights is InceptionWeights.IMAGENET1K_V1:
        try:
            return inception_v3(weights=Inception_V3_Weights.IMAGENET1K_V1).eval()
        except Exception as err:  # noqa: BLE001 - download/cache failures surface as many types
            raise ModelLoadError(
                f"cannot load torchvision Inception_V3_Weights.IMAGENET1K_V1 ({err}); offline, "
                f"pass a local state dict with weights 'file'"
            ) from None
    if cfg.weights is InceptionWeights.FILE:
        state = _load_state_dict(cfg.path)
        if "fc.weight" not in state:
            raise ModelLoadError(f"{cfg.path} is not an Inception3 state dict (no fc.weight)")
        model = Inception3(
            num_classes=state["fc.weight"].shape[0],
            init_weights=False,
            transform_input=True,
            aux_logits=any(k.startswith("AuxLogits.") for k in state),
        )
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ModelLoadError(f"{cfg.path} does not fit torchvision's Inception3: {err}") from None
        return model.eval()
    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's RNG
        torch.manual_seed(cfg.seed)
        model = Inception3(num_classes=1000, aux_logits=False, transform_input=True, init_weights=True)
        _calibrate_batch_norms(model)
    return model.eval()


@torch.no_grad()
def _calibrate_batch_norms(model: torch.nn.Module, images: int = 1) -> None:
    """Set BatchNorm running statistics from one pass over seeded noise images.

    A fresh Inception3 has identity BN statistics, so its activations grow about tenfold per layer (~1e11 at the
    pool) and every image lands on the same saturated class: IS would be exactly 1 for any input. Data-dependent
    statistics keep the random network's outputs moderate (hundreds, not 1e11) and input-dependent, which is all
    the tests need.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one pass sets the statistics exactly
    model.train()
    # Smooth noise images in [0, 1] (32 px upsampled): white noise at 299 px has none of the spatial correlation of
    # real images, and a random network calibrated on it still blows up on them.
    pixels = F.interpolate(
        torch.rand(images, 3, 32, 32),
        size=(INCEPTION_INPUT_SIZE, INCEPTION_INPUT_SIZE),
        mode="bilinear",
        align_corners=False,
    )
    mean, std = torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1)
    model((pixels - mean) / std)  # normalised exactly as `InceptionFeatureExtractor` feeds real images
    model.eval()


class InceptionFeatureExtractor:
    """Pooled features of one layer plus the class logits, from one forward pass per batch."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        dims: FeatureDims = FeatureDims.POOL3,
        extractor_id: str,
        device: torch.device,
        batch_size: int = 32,
    ):
        self.model = model.to(device).eval()
        self.dims = FeatureDims(dims)
        self.extractor_id = extractor_id
        self.device = device
        self.batch_size = batch_size
        self._mean = torch.tensor(_IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(_IMAGENET_STD, device=device).view(1, 3, 1, 1)
        self._captured: torch.Tensor | None = None
        getattr(self.model, _FEATURE_MODULE[self.dims]).register_forward_hook(self._capture)

    @classmethod
    def from_config(cls, cfg: InceptionConfig, *, device: torch.device | None = None) -> "InceptionFeatureExtractor":
        return cls(
            build_inception(cfg),
            dims=cfg.dims,
            extractor_id=cfg.extractor_id,
            device=device or resolve_device(cfg.device),
            batch_size=cfg.batch_size,
        )

    def _capture(self, module, inputs, output: torch.Tensor) -> None:
        self._captured = output

    def _pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        batch = []
        for im in images:
            array = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
            tensor = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)  # (1, 3, H, W)
            batch.append(
                F.interpolate(
                    tensor, size=(INCEPTION_INPUT_SIZE, INCEPTION_INPUT_SIZE), mode="bilinear", align_corners=False
                )
            )
        pixels = torch.cat(batch).to(self.device)  # (n, 3, 299, 299)
        return (pixels - self._mean) / self._std

    @torch.inference_mode()
    def extract(self, images: Sequence[Image.Image]) -> InceptionOutputs:
        features, logits = [], []
        images = list(images)
        for start in range(0, len(images), self.batch_size):
            out = self.model(self._pixels(images[start : start + self.batch_size]))
            out = out.logits if hasattr(out, "logits") else out  # (n, classes)
            pooled = F.adaptive_avg_pool2d(self._captured, 1).flatten(1)  # (n, dims)
            features.append(pooled.double().cpu().numpy())
            logits.append(out.double().cpu().numpy())
        if not features:
            return InceptionOutputs(np.zeros((0, int(self.dims))), np.zeros((0, 0)))
        result = InceptionOutputs(np.concatenate(features), np.concatenate(logits))
        if not (np.isfinite(result.features).all() and np.isfinite(result.logits).all()):
            raise QualityInputError("the inception network produced non-finite outputs (broken weights?)")
        return result
