"""MultiStageUNet: a shared encoder and time embedding, one decoder of its own width per stage, routed by timestep.

Layout (the LDM variant of the paper, which also shares the bottleneck):
  time embedding ─┐
  conv_in → down blocks → mid block      (shared by every stage)
           └── skip activations ──┐
  decoder[k]: up levels → norm → conv_out   (one per stage; widths differ, skips are the encoder's)

With `cross_attention_dim` set, attention levels of the encoder, the mid block and the decoders attend to
`encoder_hidden_states`, and `forward` takes the arguments of `UNet2DConditionModel.forward`, so the model can be
the `unet` of a `StableDiffusionPipeline`. Without it the model is unconditional and fits `DDPMPipeline`/`DDIMPipeline`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, UNetMidBlock2DCrossAttn, get_down_block
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from diffusers.models.upsampling import Upsample2D
from torch import nn

from modm.multistage.boundaries import check_ordered_boundaries
from modm.multistage.routing import apply_by_stage, broadcast_timesteps, route_timesteps

__all__ = ["CheckpointClassError", "MultiStageUNet", "StageCountError", "StageDecoder"]

RESNET_EPS = 1e-5
# from_pretrained keyword arguments that locate the config file (the rest concern weights and devices).
_CONFIG_LOOKUP_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder")


class StageCountError(ValueError):
    """The number of decoders does not match the number of stages the boundaries define."""


class CheckpointClassError(ValueError):
    """A checkpoint saved by another model class (its weights would load only partly, silently)."""


class StageDecoder(nn.Module):
    """The up path of one stage: (levels × (layers_per_block + 1)) ResNet blocks on the encoder's skips."""

    def __init__(
        self,
        *,
        widths: Sequence[int],
        skip_channels: Sequence[int],
        bottleneck_channels: int,
        out_channels: int,
        temb_channels: int,
        layers_per_block: int,
        norm_num_groups: int,
        attention_levels: Sequence[bool],
        cross_attention_dim: int | None,
        attention_head_dim: int,
    ):
        super().__init__()
        skips = list(skip_channels)
        self.resnets, self.attentions, self.upsamplers = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        prev = bottleneck_channels
        for level in reversed(range(len(widths))):
            width = widths[level]
            level_resnets, level_attentions = nn.ModuleList(), nn.ModuleList()
            for _ in range(layers_per_block + 1):
                level_resnets.append(
                    ResnetBlock2D(
                        in_channels=prev + skips.pop(),
                        out_channels=width,
                        temb_channels=temb_channels,
                        eps=RESNET_EPS,
                        groups=norm_num_groups,
                    )
                )
                if attention_levels[level]:
                    level_attentions.append(
                        Transformer2DModel(
                            num_attention_heads=width // attention_head_dim,
                            attention_head_dim=attention_head_dim,
                            in_channels=width,
                            num_layers=1,
                            cross_attention_dim=cross_attention_dim,
                            norm_num_groups=norm_num_groups,
                        )
                    )
                prev = width
            self.resnets.append(level_resnets)
            self.attentions.append(level_attentions)
            self.upsamplers.append(Upsample2D(width, use_conv=True) if level > 0 else nn.Identity())
        self.norm_out = nn.GroupNorm(norm_num_groups, widths[0], eps=RESNET_EPS)
        self.conv_out = nn.Conv2d(widths[0], out_channels, kernel_size=3, padding=1)

    def forward(
        self,
        hidden: torch.Tensor,
        skips: list[torch.Tensor],
        temb: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
        attention_kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """hidden: (B, C_mid, h, w) bottleneck; skips: encoder activations, shallowest first; temb: (B, T)."""
        skips = list(skips)
        for level_resnets, level_attentions, upsample in zip(self.resnets, self.attentions, self.upsamplers):
            for i, resnet in enumerate(level_resnets):
                hidden = resnet(torch.cat([hidden, skips.pop()], dim=1), temb)  # (B, width, h, w)
                if len(level_attentions):
                    hidden = level_attentions[i](
                        hidden, encoder_hidden_states=encoder_hidden_states, return_dict=False, **attention_kwargs
                    )[0]
            if isinstance(upsample, Upsample2D):
                hidden = upsample(hidden, output_size=skips[-1].shape[-2:])
        return self.conv_out(torch.nn.functional.silu(self.norm_out(hidden)))  # (B, out_channels, H, W)


class MultiStageUNet(ModelMixin, ConfigMixin):
    """A U-Net with one decoder per stage; a sample at timestep t is decoded by stage k = #{boundaries ≤ t}.

    Args:
        sample_size: default spatial size (pipelines read it for their default resolution).
        in_channels, out_channels: image (or latent) channels.
        block_out_channels: widths of the shared encoder, one per resolution level.
        decoder_block_out_channels: one tuple of widths per stage (same number of levels as the encoder);
            stage 0 is the low-noise stage.
        stage_boundaries: increasing boundaries in the units of the `timestep` the sampler passes (training
            timesteps for DDPM-family schedulers); len(stage_boundaries) + 1 stages.
        layers_per_block: ResNet blocks per encoder level (decoders use one more, as in diffusers).
        norm_num_groups: GroupNorm groups; every width and every (width + skip) sum must be divisible by it.
        cross_attention_dim: text-embedding width; None for an unconditional model.
        attention_levels: which resolution levels carry cross-attention (default: all but the first, when
            cross_attention_dim is set).
        attention_head_dim: channels per attention head.
        time_cond_proj_dim: width of an optional extra condition added to the time embedding (LCM guidance
            embedding); None disables it.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        sample_size: int = 16,
        in_channels: int = 1,
        out_channels: int = 1,
        block_out_channels: tuple[int, ...] = (32, 64),
        decoder_block_out_channels: tuple[tuple[int, ...], ...] = ((48, 96), (32, 64), (16, 32)),
        stage_boundaries: tuple[float, ...] = (333.0, 666.0),
        layers_per_block: int = 1,
        norm_num_groups: int = 8,
        cross_attention_dim: int | None = None,
        attention_levels: tuple[bool, ...] | None = None,
        attention_head_dim: int = 8,
        time_cond_proj_dim: int | None = None,
    ):
        super().__init__()
        levels = len(block_out_channels)
        self._boundaries = check_ordered_boundaries(
            stage_boundaries, low=float("-inf"), high=float("inf"), what="stage boundary"
        )
        num_stages = len(self._boundaries) + 1
        if len(decoder_block_out_channels) != num_stages:
            raise StageCountError(
                f"{len(stage_boundaries)} stage boundaries define {num_stages} stages but "
                f"{len(decoder_block_out_channels)} decoders were given: {list(decoder_block_out_channels)}"
            )
        for k, widths in enumerate(decoder_block_out_channels):
            if len(widths) != levels:
                raise ValueError(
                    f"decoder {k} has {len(widths)} levels {list(widths)}; the encoder has {levels} "
                    f"{list(block_out_channels)}"
                )
        if attention_levels is None:
            attention_levels = tuple(cross_attention_dim is not None and i > 0 for i in range(levels))
        if len(attention_levels) != levels:
            raise ValueError(f"attention_levels has {len(attention_levels)} entries, expected {levels}")
        if any(attention_levels) and cross_attention_dim is None:
            raise ValueError("attention_levels needs cross_attention_dim (the text embedding width)")
        all_widths = list(block_out_channels) + [w for ws in decoder_block_out_channels for w in ws]
        for width in all_widths:
            if width % norm_num_groups:
                raise ValueError(f"width {width} is not divisible by norm_num_groups={norm_num_groups}")
        for width in (
            w
            for ws in [block_out_channels, *decoder_block_out_channels]
            for w, attn in zip(ws, attention_levels)
            if attn
        ):
            if width % attention_head_dim:
                raise ValueError(f"attention width {width} is not divisible by attention_head_dim={attention_head_dim}")

        temb_channels = 4 * block_out_channels[0]
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], temb_channels, cond_proj_dim=time_cond_proj_dim)
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)

        # Shared encoder; skip_channels records every activation the decoders will receive, shallowest first.
        skip_channels = [block_out_channels[0]]
        self.down_blocks = nn.ModuleList()
        prev = block_out_channels[0]
        for level, width in enumerate(block_out_channels):
            last = level == levels - 1
            self.down_blocks.append(
                get_down_block(
                    "CrossAttnDownBlock2D" if attention_levels[level] else "DownBlock2D",
                    num_layers=layers_per_block,
                    in_channels=prev,
                    out_channels=width,
                    temb_channels=temb_channels,
                    add_downsample=not last,
                    resnet_eps=RESNET_EPS,
                    resnet_act_fn="silu",
                    resnet_groups=norm_num_groups,
                    cross_attention_dim=cross_attention_dim,
                    num_attention_heads=width // attention_head_dim,
                    attention_head_dim=attention_head_dim,
                    downsample_padding=1,
                )
            )
            skip_channels += [width] * (layers_per_block + (0 if last else 1))
            prev = width
        bottleneck = block_out_channels[-1]
        if cross_attention_dim is not None:
            self.mid_block = UNetMidBlock2DCrossAttn(
                in_channels=bottleneck,
                temb_channels=temb_channels,
                resnet_eps=RESNET_EPS,
                resnet_groups=norm_num_groups,
                cross_attention_dim=cross_attention_dim,
                num_attention_heads=bottleneck // attention_head_dim,
            )
        else:
            self.mid_block = UNetMidBlock2D(
                in_channels=bottleneck,
                temb_channels=temb_channels,
                resnet_eps=RESNET_EPS,
                resnet_groups=norm_num_groups,
                add_attention=False,
            )

        self.decoders = nn.ModuleList(
            StageDecoder(
                widths=widths,
                skip_channels=skip_channels,
                bottleneck_channels=bottleneck,
                out_channels=out_channels,
                temb_channels=temb_channels,
                layers_per_block=layers_per_block,
                norm_num_groups=norm_num_groups,
                attention_levels=attention_levels,
                cross_attention_dim=cross_attention_dim,
                attention_head_dim=attention_head_dim,
            )
            for widths in decoder_block_out_channels
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """ModelMixin.from_pretrained, refusing checkpoints whose config names another class."""
        lookup = {key: kwargs[key] for key in _CONFIG_LOOKUP_KWARGS if key in kwargs}
        saved_class = cls.load_config(pretrained_model_name_or_path, **lookup).get("_class_name")
        if saved_class != cls.__name__:
            raise CheckpointClassError(
                f"{pretrained_model_name_or_path} holds a {saved_class} checkpoint, not a {cls.__name__}"
            )
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @property
    def num_stages(self) -> int:
        return len(self.decoders)

    def stage_of(self, timestep: torch.Tensor | float | int) -> torch.Tensor:
        """Stage index of each timestep (the same routing forward uses)."""
        t = torch.as_tensor(timestep)
        return route_timesteps(t.reshape(-1), self._boundaries)

    def encode(
        self,
        sample: torch.Tensor,
        timesteps: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Shared part for the whole batch: bottleneck (B, C_mid, h, w), skips (shallowest first), temb (B, T)."""
        temb = self.time_embedding(self.time_proj(timesteps).to(dtype=sample.dtype), timestep_cond)  # (B, T)
        hidden = self.conv_in(sample)  # (B, C0, H, W)
        skips = [hidden]
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                hidden, res = block(
                    hidden,
                    temb,
                    encoder_hidden_states=encoder_hidden_states,
                    attention_mask=attention_mask,
                    cross_attention_kwargs=cross_attention_kwargs,
                    encoder_attention_mask=encoder_attention_mask,
                )
            else:
                hidden, res = block(hidden, temb)
            skips += list(res)
        if isinstance(self.mid_block, UNetMidBlock2DCrossAttn):
            hidden = self.mid_block(
                hidden,
                temb,
                encoder_hidden_states=encoder_hidden_states,
                attention_mask=attention_mask,
                cross_attention_kwargs=cross_attention_kwargs,
                encoder_attention_mask=encoder_attention_mask,
            )
        else:
            hidden = self.mid_block(hidden, temb)
        return hidden, skips, temb

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        down_intrablock_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DConditionOutput | tuple[torch.Tensor]:
        """sample (B, C, H, W), timestep scalar or (B,), encoder_hidden_states (B, L, cross_attention_dim).

        Signature of `UNet2DConditionModel.forward`; class labels, IP-adapter inputs and ControlNet/T2I residuals
        are not supported and raise.
        """
        unsupported = {
            "class_labels": class_labels,
            "added_cond_kwargs": added_cond_kwargs,
            "down_block_additional_residuals": down_block_additional_residuals,
            "mid_block_additional_residual": mid_block_additional_residual,
            "down_intrablock_additional_residuals": down_intrablock_additional_residuals,
        }
        passed = sorted(name for name, value in unsupported.items() if value is not None)
        if passed:
            raise ValueError(f"MultiStageUNet does not support {', '.join(passed)}")
        conditioned = self.config.cross_attention_dim is not None
        if conditioned and encoder_hidden_states is None:
            raise ValueError(
                "this MultiStageUNet has cross-attention: pass encoder_hidden_states "
                f"(B, L, {self.config.cross_attention_dim})"
            )
        if not conditioned and encoder_hidden_states is not None:
            raise ValueError(
                "this MultiStageUNet is unconditional (cross_attention_dim=None) but got encoder_hidden_states"
            )
        if sample.ndim != 4 or sample.shape[1] != self.config.in_channels:
            raise ValueError(f"sample must be (B, {self.config.in_channels}, H, W), got {tuple(sample.shape)}")

        timesteps = broadcast_timesteps(timestep, sample.shape[0], device=sample.device)  # (B,)
        hidden, skips, temb = self.encode(
            sample,
            timesteps,
            encoder_hidden_states,
            timestep_cond,
            attention_mask,
            cross_attention_kwargs,
            encoder_attention_mask,
        )
        stages = route_timesteps(timesteps, self._boundaries)  # (B,)
        attention_kwargs = {
            "cross_attention_kwargs": cross_attention_kwargs,
            "attention_mask": attention_mask,
            "encoder_attention_mask": encoder_attention_mask,
        }

        def decode(k: int, index: torch.Tensor) -> torch.Tensor:
            ehs = encoder_hidden_states[index] if encoder_hidden_states is not None else None
            kwargs = {
                key: (value[index] if isinstance(value, torch.Tensor) else value)
                for key, value in attention_kwargs.items()
            }
            return self.decoders[k](hidden[index], [s[index] for s in skips], temb[index], ehs, kwargs)

        out = apply_by_stage(stages, self.num_stages, decode)  # (B, C, H, W)
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)
