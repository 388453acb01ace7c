"""`DistriGroupNorm`: GroupNorm over the whole image while each rank holds one row stripe.

Statistics are exchanged as per-stripe (mean, biased variance) and combined with the parallel-variance formula, so
the synchronous path equals `nn.GroupNorm` (which uses the biased variance) up to rounding. distrifuser multiplies the
variance by N/(N-1) with the local count, which makes even its synchronous mode differ from the reference.
"""

from __future__ import annotations

import torch
from torch import nn

from modm.parallel.config import GroupNormMode
from modm.parallel.distrifusion.base import PatchWrapper

__all__ = ["DistriGroupNorm"]


def _combine(means: torch.Tensor, variances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-image mean and biased variance from equal-sized stripes' (n, B, G) statistics."""
    mean = means.mean(0)
    return mean, variances.mean(0) + ((means - mean) ** 2).mean(0)


class DistriGroupNorm(PatchWrapper):
    def __init__(self, norm: nn.GroupNorm, **kwargs):
        super().__init__(norm, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.patch_world_size == 1:
            return self.module(x)
        norm: nn.GroupNorm = self.module
        mode = self.state.config.groupnorm_mode
        b, c = x.shape[:2]
        # Statistics in fp32 whatever the activation dtype (as nn.GroupNorm's kernels do); they travel in the
        # activation dtype because the CommManager keeps one flat buffer per rank, of a single dtype.
        grouped = x.reshape(b, norm.num_groups, -1).float()  # (B, G, C/G * h * W)
        local_var, local_mean = torch.var_mean(grouped, dim=-1, unbiased=False)
        stats = torch.stack([local_mean, local_var]).to(x.dtype)  # (2, B, G)

        if mode is GroupNormMode.SEPARATE and not self.state.synchronous:
            mean, var = local_mean, local_var
        elif mode is GroupNormMode.CORRECTED_ASYNC and not self.state.synchronous:
            mean, var = self.exchange(stats, lambda all_stats: self._corrected(all_stats, stats))
        else:  # SYNC, STALE, and every mode during the synchronous warm-up
            mean, var = self.exchange(
                stats,
                lambda all_stats: _combine(*torch.stack(all_stats).float().unbind(1)),
                force_sync=mode is GroupNormMode.SYNC,
            )

        # Fold mean, rstd and the affine into one per-channel scale and shift: a single pass over x.
        per_group = c // norm.num_groups
        scale = torch.rsqrt(var + norm.eps).repeat_interleave(per_group, dim=1)  # (B, C)
        shift = -mean.repeat_interleave(per_group, dim=1) * scale
        if norm.affine:
            scale = scale * norm.weight
            shift = shift * norm.weight + norm.bias
        shape = (b, c) + (1,) * (x.dim() - 2)
        return torch.addcmul(shift.to(x.dtype).reshape(shape), x, scale.to(x.dtype).reshape(shape))

    def _corrected(self, all_stats: list[torch.Tensor], fresh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """distrifuser's corrected asynchronous GroupNorm: stale global E[x], E[x^2] plus this stripe's change."""
        # all_stats[patch_index] is already `fresh`; the stale own value is still in this rank's buffer slot.
        stale_own = self.comm.peer_views(self.comm.slot(self.key, fresh))[self.patch_index]
        stale = list(all_stats)
        stale[self.patch_index] = stale_own
        means, variances = torch.stack(stale).float().unbind(1)
        stale_own = stale_own.float()
        second = variances + means**2  # E[x^2] per stripe
        fresh_mean, fresh_var = fresh.float().unbind(0)
        fresh_second = fresh_var + fresh_mean**2
        mean = means.mean(0) + (fresh_mean - stale_own[0])
        var = second.mean(0) + (fresh_second - (stale_own[1] + stale_own[0] ** 2)) - mean**2
        # The corrected variance can go negative on small feature maps; fall back to the stripe's own.
        var = torch.where(var < 0, fresh_var, var)
        return mean, var
