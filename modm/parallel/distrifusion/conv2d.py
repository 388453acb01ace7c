"""`DistriConv2d`: a k×k convolution over a row stripe, with halo rows from the neighbouring stripes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from modm.parallel.distrifusion.base import PatchWrapper
from modm.parallel.errors import UnsupportedModelError
from modm.parallel.partition import row_range

__all__ = ["DistriConv2d", "check_conv_supported"]


def check_conv_supported(conv: nn.Conv2d, key: str) -> None:
    """Halo exchange assumes 'same'-style zero padding in height, stride 1 or 2 and no dilation."""
    kh = conv.kernel_size[0]
    if isinstance(conv.padding, str):
        raise UnsupportedModelError(f"{key}: string padding {conv.padding!r} is not supported")
    if conv.padding_mode != "zeros" or conv.dilation != (1, 1) or conv.stride[0] not in (1, 2):
        raise UnsupportedModelError(
            f"{key}: conv with padding_mode={conv.padding_mode}, dilation={conv.dilation}, stride={conv.stride} "
            "is not supported by the halo exchange"
        )
    if conv.padding[0] != kh // 2:
        raise UnsupportedModelError(f"{key}: height padding {conv.padding[0]} is not kernel//2 = {kh // 2}")


class DistriConv2d(PatchWrapper):
    """Each rank convolves its own rows; the `padding` rows above and below come from the neighbours.

    Both boundaries are always sent (same shapes on every rank). The first layer of the model sees the full input on
    every rank and just cuts its rows out, so it needs no communication at all.
    """

    def __init__(self, conv: nn.Conv2d, *, is_first_layer: bool = False, **kwargs):
        check_conv_supported(conv, kwargs["key"])
        super().__init__(conv, **kwargs)
        self.is_first_layer = is_first_layer

    def _conv_rows(self, padded_rows: torch.Tensor) -> torch.Tensor:
        conv = self.module
        return F.conv2d(
            padded_rows, conv.weight, conv.bias, conv.stride, (0, conv.padding[1]), conv.dilation, conv.groups
        )

    def _sliced_forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: full input (B, C, H, W) -> this stripe's output rows (B, C', H_out / n, W_out)."""
        conv = self.module
        (kh, _), (sh, _), (ph, _) = conv.kernel_size, conv.stride, conv.padding
        height = x.shape[2]
        out_height = (height + 2 * ph - kh) // sh + 1
        o0, o1 = row_range(out_height, self.patch_world_size, self.patch_index)
        lo, hi = o0 * sh - ph, (o1 - 1) * sh - ph + kh  # input rows needed, may stick out of the image
        rows = x[:, :, max(lo, 0) : min(hi, height)]
        rows = F.pad(rows, (0, 0, max(0, -lo), max(0, hi - height)))
        return self._conv_rows(rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.patch_world_size == 1:
            return self.module(x)
        if self.is_first_layer:
            return self._sliced_forward(x)
        p = self.module.padding[0]
        if p == 0:
            return self.module(x)
        boundary = torch.stack([x[:, :, :p], x[:, :, -p:]])  # (2, B, C, p, W): my top and bottom rows
        zeros = torch.zeros_like(boundary[0])
        last = self.patch_world_size - 1

        def convolve(boundaries: list[torch.Tensor]) -> torch.Tensor:
            above = boundaries[self.patch_index - 1][1] if self.patch_index > 0 else zeros
            below = boundaries[self.patch_index + 1][0] if self.patch_index < last else zeros
            return self._conv_rows(torch.cat([above, x, below], dim=2))

        return self.exchange(boundary, convolve)
