"""Sample quality on digits: FID in the feature space of a small classifier trained on the same digits.

Inception features mean nothing on 16-pixel digits and cannot be downloaded here; a CNN trained on the real digits
gives a feature space where class structure and stroke shape matter, which is what FID needs.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import linalg
from torch import nn

__all__ = ["DigitClassifier", "fit_digit_classifier", "frechet_distance", "classifier_fid"]


class DigitClassifier(nn.Module):
    """conv(16) → conv(32) → pooled features (feature_dim) → 10 logits, for (B, 1, S, S) images in [-1, 1]."""

    def __init__(self, feature_dim: int = 64):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.SiLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(32 * 16, feature_dim),
            nn.SiLU(),
        )
        self.head = nn.Linear(feature_dim, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))  # (B, 10)


def fit_digit_classifier(
    images: torch.Tensor, labels: torch.Tensor, *, steps: int = 400, batch_size: int = 128, seed: int = 0
) -> tuple[DigitClassifier, float]:
    """Train on 80% of the digits; return the classifier (eval mode) and its accuracy on the other 20%."""
    if len(images) < 10:
        raise ValueError(f"need at least 10 digit images to train the feature classifier, got {len(images)}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=generator)
    split = int(0.8 * len(images))
    train_idx, test_idx = order[:split], order[split:]
    torch.manual_seed(seed)
    model = DigitClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        batch = train_idx[torch.randint(0, len(train_idx), (batch_size,), generator=generator)]
        loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(images[test_idx]).argmax(1) == labels[test_idx]).float().mean().item()
    return model, accuracy


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """‖μa − μb‖² + Tr(Σa + Σb − 2(ΣaΣb)^½) between two (N, D) feature sets."""
    if len(features_a) < 2 or len(features_b) < 2:
        raise ValueError(f"need at least 2 samples per set, got {len(features_a)} and {len(features_b)}")
    mu_a, mu_b = features_a.mean(0), features_b.mean(0)
    cov_a, cov_b = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if np.iscomplexobj(covmean):  # numerical noise gives tiny imaginary parts
        covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2.0 * covmean))


@torch.no_grad()
def classifier_fid(classifier: DigitClassifier, real: torch.Tensor, generated: torch.Tensor) -> float:
    """FID between real and generated (B, 1, S, S) images in [-1, 1], in the classifier's feature space."""
    return frechet_distance(
        classifier.features(real).double().numpy(), classifier.features(generated.clamp(-1, 1)).double().numpy()
    )
