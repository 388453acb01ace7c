"""Attention wrappers for patch parallelism (diffusers `Attention` modules).

* `DistriSelfAttention` (UNet `attn1`, SD3.5 `attn2`): queries are this stripe's tokens; keys and values cover the
  whole image -- this stripe's fresh, the others' from the previous step once past the warm-up. A row stripe is a
  contiguous token range (tokens are row-major), so concatenating per-stripe K/V restores the global order.
* `DistriCrossAttention` (UNet `attn2`): text tokens are replicated, so nothing is exchanged; K/V of the text are
  computed once per call and reused at every step.
* `DistriJointAttention` (SD3 `JointTransformerBlock.attn`): joint image+text attention with stale image K/V.

The math follows diffusers' AttnProcessor2_0 / JointAttnProcessor2_0 (default SDPA scale), so the synchronous path
matches the unwrapped model up to rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from modm.parallel.distrifusion.base import PatchWrapper
from modm.parallel.errors import UnsupportedModelError

__all__ = ["DistriSelfAttention", "DistriCrossAttention", "DistriJointAttention"]


def _check_plain(attn: Attention, key: str) -> None:
    unsupported = [name for name in ("spatial_norm", "group_norm") if getattr(attn, name, None) is not None]
    if unsupported:
        raise UnsupportedModelError(f"{key}: attention with {unsupported} is not supported by patch parallelism")


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, heads*D) -> (B, heads, L, D)"""
    b, length, inner = x.shape
    return x.view(b, length, heads, inner // heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, L, D) -> (B, L, heads*D)"""
    b, heads, length, d = x.shape
    return x.transpose(1, 2).reshape(b, length, heads * d)


def _reject_extra(key: str, attention_mask, kwargs) -> None:
    if attention_mask is not None or kwargs:
        raise UnsupportedModelError(
            f"{key}: attention masks and extra attention kwargs ({sorted(kwargs)}) are "
            "not supported by patch parallelism"
        )


def _finish(attn: Attention, out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    out = attn.to_out[1](attn.to_out[0](out))
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


class DistriSelfAttention(PatchWrapper):
    def __init__(self, attn: Attention, **kwargs):
        _check_plain(attn, kwargs["key"])
        super().__init__(attn, **kwargs)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None, **kwargs):
        attn: Attention = self.module
        if self.patch_world_size == 1:
            return attn(hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        if encoder_hidden_states is not None or hidden_states.dim() != 3:
            raise UnsupportedModelError(f"{self.key}: self-attention expects (B, L, C) tokens and no context")
        _reject_extra(self.key, attention_mask, kwargs)
        query = _heads(attn.to_q(hidden_states), attn.heads)  # (B, h, L/n, D)
        kv = torch.cat([attn.to_k(hidden_states), attn.to_v(hidden_states)], -1)  # (B, L/n, 2*inner)
        full_kv = self.exchange(kv, lambda parts: torch.cat(parts, dim=1))  # (B, L, 2*inner)
        key, value = (_heads(t, attn.heads) for t in full_kv.chunk(2, dim=-1))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        return _finish(attn, _merge(out).to(query.dtype), hidden_states)


class DistriCrossAttention(PatchWrapper):
    def __init__(self, attn: Attention, **kwargs):
        _check_plain(attn, kwargs["key"])
        super().__init__(attn, **kwargs)
        self._cache_key: tuple | None = None
        self._cached_kv: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None, **kwargs):
        attn: Attention = self.module
        if self.patch_world_size == 1:
            return attn(hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        if encoder_hidden_states is None or hidden_states.dim() != 3:
            raise UnsupportedModelError(f"{self.key}: cross-attention expects (B, L, C) tokens and a context")
        _reject_extra(self.key, attention_mask, kwargs)
        # The text does not change within a generation; key on the tensor too in case a caller changes it.
        cache_key = (self.state.call_index, encoder_hidden_states.data_ptr(), tuple(encoder_hidden_states.shape))
        if cache_key != self._cache_key:
            context = encoder_hidden_states
            if attn.norm_cross:
                context = attn.norm_encoder_hidden_states(context)
            key, value = (_heads(proj(context), attn.heads) for proj in (attn.to_k, attn.to_v))
            if attn.norm_k is not None:
                key = attn.norm_k(key)
            self._cache_key, self._cached_kv = cache_key, (key, value)
        key, value = self._cached_kv
        query = _heads(attn.to_q(hidden_states), attn.heads)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        return _finish(attn, _merge(out).to(query.dtype), hidden_states)


class DistriJointAttention(PatchWrapper):
    """SD3 MMDiT joint attention: [image stripe; text] queries over [whole image (stale peers); text] keys.

    Text tokens are replicated; every rank updates them with its own view of the image, which is exact in the
    synchronous steps and one step stale for the other stripes afterwards.
    """

    def __init__(self, attn: Attention, **kwargs):
        _check_plain(attn, kwargs["key"])
        super().__init__(attn, **kwargs)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None, **kwargs):
        attn: Attention = self.module
        if self.patch_world_size == 1:
            return attn(hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        _reject_extra(self.key, attention_mask, kwargs)
        local_tokens = hidden_states.shape[1]
        query = _heads(attn.to_q(hidden_states), attn.heads)
        kv = torch.cat([attn.to_k(hidden_states), attn.to_v(hidden_states)], -1)
        full_kv = self.exchange(kv, lambda parts: torch.cat(parts, dim=1))
        key, value = (_heads(t, attn.heads) for t in full_kv.chunk(2, dim=-1))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if encoder_hidden_states is not None:
            c_query, c_key, c_value = (
                _heads(proj(encoder_hidden_states), attn.heads)
                for proj in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
            )
            if attn.norm_added_q is not None:
                c_query = attn.norm_added_q(c_query)
            if attn.norm_added_k is not None:
                c_key = attn.norm_added_k(c_key)
            query = torch.cat([query, c_query], dim=2)
            key = torch.cat([key, c_key], dim=2)
            value = torch.cat([value, c_value], dim=2)
        out = _merge(F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False))
        out = out.to(query.dtype)
        image_out = attn.to_out[1](attn.to_out[0](out[:, :local_tokens]))
        if encoder_hidden_states is None:
            return image_out
        context_out = out[:, local_tokens:]
        if not attn.context_pre_only:
            context_out = attn.to_add_out(context_out)
        return image_out, context_out
