"""Walkers that turn a diffusers denoiser into a patch-parallel one (DistriFusion or the naive-patch baseline)."""

from __future__ import annotations

from diffusers import SD3Transformer2DModel, UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock, JointTransformerBlock
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import PatchEmbed
from torch import nn

from modm.parallel.config import ParallelMethod
from modm.parallel.context import ParallelContext
from modm.parallel.distrifusion.attention import DistriCrossAttention, DistriJointAttention, DistriSelfAttention
from modm.parallel.distrifusion.conv2d import DistriConv2d
from modm.parallel.distrifusion.groupnorm import DistriGroupNorm
from modm.parallel.distrifusion.model import PatchParallelModel
from modm.parallel.distrifusion.tokens import DistriPatchEmbed, GatherTokens
from modm.parallel.errors import ParallelConfigError, UnsupportedModelError

__all__ = ["wrap_unet", "wrap_sd3_transformer", "wrap_naive_patch", "unet_downsample_factor"]


def unet_downsample_factor(unet: UNet2DConditionModel) -> int:
    """Latent rows / rows of the smallest feature map: 2 per down block that has a downsampler."""
    return 2 ** sum(1 for block in unet.down_blocks if getattr(block, "downsamplers", None))


def _require(model: nn.Module, cls: type) -> None:
    if not isinstance(model, cls):
        raise UnsupportedModelError(f"expected a diffusers {cls.__name__}, got {type(model).__name__}")


def _require_method(ctx: ParallelContext, method: ParallelMethod) -> None:
    if ctx.config.method is not method:
        raise ParallelConfigError(
            f"this walker implements {method.value}, the context is for {ctx.config.method.value}"
        )


def wrap_unet(unet: UNet2DConditionModel, ctx: ParallelContext) -> PatchParallelModel:
    """DistriFusion for a UNet2DConditionModel: swap k×k convs, attn1/attn2 and GroupNorms for stripe wrappers."""
    _require(unet, UNet2DConditionModel)
    _require_method(ctx, ParallelMethod.DISTRIFUSION)
    parallel = PatchParallelModel(unet, ctx, downsample_factor=unet_downsample_factor(unet), slice_input_rows=False)
    if ctx.patch_world_size > 1:
        try:
            _swap_unet_layers(unet, parallel, prefix="")
        except Exception:
            parallel.remove()
            raise
    return parallel


def _swap_unet_layers(module: nn.Module, parallel: PatchParallelModel, prefix: str) -> None:
    """Depth-first; a swapped layer's own children are not visited (the wrapper owns them)."""
    for name, child in list(module.named_children()):
        key = f"{prefix}{name}"
        common = dict(key=key, **parallel.wrapper_kwargs)
        if isinstance(child, nn.Conv2d) and child.kernel_size != (1, 1):
            parallel.swap(module, name, DistriConv2d(child, is_first_layer=(key == "conv_in"), **common))
        elif isinstance(child, nn.GroupNorm):
            parallel.swap(module, name, DistriGroupNorm(child, **common))
        elif isinstance(child, Attention):
            if isinstance(module, BasicTransformerBlock) and name == "attn1" and not module.only_cross_attention:
                parallel.swap(module, name, DistriSelfAttention(child, **common))
            elif isinstance(module, BasicTransformerBlock) and name == "attn2":
                parallel.swap(module, name, DistriCrossAttention(child, **common))
            else:
                raise UnsupportedModelError(
                    f"{key}: a diffusers Attention under {type(module).__name__} is not supported by DistriFusion "
                    "(only attn1/attn2 of BasicTransformerBlock, as in SD/SDXL UNets)"
                )
        elif isinstance(child, (nn.BatchNorm2d, nn.InstanceNorm2d)):
            raise UnsupportedModelError(f"{key}: {type(child).__name__} needs whole-image statistics")
        else:
            _swap_unet_layers(child, parallel, prefix=f"{key}.")


def wrap_sd3_transformer(transformer: SD3Transformer2DModel, ctx: ParallelContext) -> PatchParallelModel:
    """Patch (sequence) parallelism with stale K/V for SD3Transformer2DModel.

    Every rank embeds the whole latent and keeps its own row stripe of tokens; joint attention reads the other
    stripes' image K/V (stale after the warm-up); LayerNorms and MLPs are per token. The transformer's own
    output tokens are gathered after `proj_out`, so the transformer's own unpatchify sees the whole image.
    """
    _require(transformer, SD3Transformer2DModel)
    _require_method(ctx, ParallelMethod.DISTRIFUSION)
    patch = transformer.config.patch_size
    parallel = PatchParallelModel(
        transformer, ctx, downsample_factor=patch, slice_input_rows=False, output_is_stripe=False
    )
    if ctx.patch_world_size > 1:
        if not isinstance(transformer.pos_embed, PatchEmbed):
            parallel.remove()
            raise UnsupportedModelError(f"pos_embed is {type(transformer.pos_embed).__name__}, expected PatchEmbed")
        parallel.swap(
            transformer,
            "pos_embed",
            DistriPatchEmbed(transformer.pos_embed, patch_size=patch, key="pos_embed", **parallel.wrapper_kwargs),
        )
        for i, block in enumerate(transformer.transformer_blocks):
            if not isinstance(block, JointTransformerBlock):
                parallel.remove()
                raise UnsupportedModelError(f"transformer_blocks.{i} is {type(block).__name__}")
            parallel.swap(
                block,
                "attn",
                DistriJointAttention(block.attn, key=f"transformer_blocks.{i}.attn", **parallel.wrapper_kwargs),
            )
            if block.attn2 is not None:  # SD3.5 dual attention: image-only self-attention
                parallel.swap(
                    block,
                    "attn2",
                    DistriSelfAttention(block.attn2, key=f"transformer_blocks.{i}.attn2", **parallel.wrapper_kwargs),
                )
        parallel.swap(
            transformer, "proj_out", GatherTokens(transformer.proj_out, key="proj_out", **parallel.wrapper_kwargs)
        )
    return parallel


def wrap_naive_patch(model: nn.Module, ctx: ParallelContext) -> PatchParallelModel:
    """The baseline: each rank denoises its own rows with the unmodified model; no exchange between stripes."""
    _require_method(ctx, ParallelMethod.NAIVE_PATCH)
    if isinstance(model, UNet2DConditionModel):
        factor = unet_downsample_factor(model)
    elif isinstance(model, SD3Transformer2DModel):
        factor = model.config.patch_size
    else:
        raise UnsupportedModelError(
            f"naive patch supports UNet2DConditionModel and SD3Transformer2DModel, got {type(model).__name__}"
        )
    return PatchParallelModel(model, ctx, downsample_factor=factor, slice_input_rows=True)
