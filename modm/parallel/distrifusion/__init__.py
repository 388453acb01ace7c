"""DistriFusion (displaced patch parallelism) and the naive-patch baseline for diffusers denoisers."""

from modm.parallel.distrifusion.attention import DistriCrossAttention, DistriJointAttention, DistriSelfAttention
from modm.parallel.distrifusion.base import PatchStepState, PatchWrapper
from modm.parallel.distrifusion.comm import CommManager
from modm.parallel.distrifusion.conv2d import DistriConv2d
from modm.parallel.distrifusion.groupnorm import DistriGroupNorm
from modm.parallel.distrifusion.model import PatchParallelModel
from modm.parallel.distrifusion.tokens import DistriPatchEmbed, GatherTokens
from modm.parallel.distrifusion.unet import unet_downsample_factor, wrap_naive_patch, wrap_sd3_transformer, wrap_unet

__all__ = [
    "CommManager",
    "PatchStepState",
    "PatchWrapper",
    "PatchParallelModel",
    "DistriConv2d",
    "DistriGroupNorm",
    "DistriSelfAttention",
    "DistriCrossAttention",
    "DistriJointAttention",
    "DistriPatchEmbed",
    "GatherTokens",
    "wrap_unet",
    "wrap_sd3_transformer",
    "wrap_naive_patch",
    "unet_downsample_factor",
]
