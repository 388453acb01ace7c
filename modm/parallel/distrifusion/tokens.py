"""Token-sequence ends of SD3 patch parallelism.

`DistriPatchEmbed` cuts the embedded latent to this rank's token rows; `GatherTokens` (around `proj_out`) puts the
stripes back together so the transformer's own unpatchify, which reads the full height, still works.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from diffusers.models.embeddings import PatchEmbed

from modm.parallel.distrifusion.base import PatchWrapper
from modm.parallel.partition import row_range

__all__ = ["DistriPatchEmbed", "GatherTokens"]


class DistriPatchEmbed(PatchWrapper):
    """Embedding the full latent on every rank costs one strided conv and keeps the positional crop exact."""

    def __init__(self, embed: PatchEmbed, *, patch_size: int, **kwargs):
        super().__init__(embed, **kwargs)
        self.patch_size = patch_size

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        tokens = self.module(latent)  # (B, Hp*Wp, D), row-major patches
        rows, cols = latent.shape[-2] // self.patch_size, latent.shape[-1] // self.patch_size
        r0, r1 = row_range(rows, self.patch_world_size, self.patch_index)
        return tokens[:, r0 * cols : r1 * cols]


class GatherTokens(PatchWrapper):
    """Run the wrapped per-token layer on this stripe, then all_gather the stripes (blocking) along the sequence."""

    def __init__(self, layer: nn.Module, **kwargs):
        super().__init__(layer, **kwargs)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.module(tokens).contiguous()  # (B, L/n, D')
        parts = [torch.empty_like(out) for _ in range(self.patch_world_size)]
        dist.all_gather(parts, out, group=self.comm.group)
        return torch.cat(parts, dim=1)  # (B, L, D')
