"""Ulysses and Ring context parallelism through diffusers' own `enable_parallelism` (diffusers 0.42.1).

The transformer's `_cp_plan` (FLUX's `FluxTransformer2DModel`, QwenImage, Wan, ...; not SD3 or SANA) says which
inputs are split along the token sequence and where the output is gathered; diffusers' hooks do the splitting and
its attention dispatcher runs Ulysses (all-to-all of heads) or Ring (key/value shards passed around). Attention stays
exact, so the output matches one device up to float rounding.

The mesh diffusers works on is built from the context's own process group (`DeviceMesh.from_group`), so diffusers
does not form one from the default group behind our back.

What runs where (checked on gloo, CPU, fp32):
- Ulysses runs on every device with diffusers' native attention backend.
- Ring needs the log-sum-exp of each partial attention. The native backend raises "Native attention does not support
  return_lse=True", and `_native_flash` calls `aten::_scaled_dot_product_flash_attention`, which has no CPU kernel; the
  backends that do return it (`_native_cudnn`, `flash`, `sage`) run on CUDA in half precision only. Ring is therefore
  refused off CUDA and in float32, before any rank computes.
"""

from __future__ import annotations

from contextlib import nullcontext
from unittest import mock

import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig
from diffusers.hooks.context_parallel import remove_context_parallel
from diffusers.models._modeling_parallel import ContextParallelInput
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from modm.parallel.config import ParallelMethod
from modm.parallel.context import ParallelContext
from modm.parallel.errors import SequenceSplitError, UnsupportedModelError

__all__ = ["ContextParallelDenoiser", "context_parallel_problem", "RING_ATTENTION_BACKEND"]

# diffusers' cuDNN SDPA backend: returns the log-sum-exp Ring attention merges partial results with.
RING_ATTENTION_BACKEND = "_native_cudnn"
_HALF = (torch.float16, torch.bfloat16)


def context_parallel_problem(denoiser_class: type | None, method: ParallelMethod) -> str | None:
    """Why this denoiser class cannot run `method` (ulysses or ring), or None."""
    name = getattr(denoiser_class, "__name__", "no unet or transformer")
    if getattr(denoiser_class, "_cp_plan", None) is None:
        return (
            f"{method.value} needs a transformer with a diffusers context-parallel plan (_cp_plan, e.g. "
            f"FluxTransformer2DModel); this model has {name}, which has none: use distrifusion or asyncdiff for "
            "SD3 and U-Nets, or parallel.method: none"
        )
    return None


def _mesh(ctx: ParallelContext, ring_degree: int, ulysses_degree: int) -> DeviceMesh:
    """The ("ring", "ulysses") mesh diffusers expects, over the context's world group; the dimension of size 1 is
    this rank alone."""
    singletons = [dist.new_group([r]) for r in range(ctx.world_size)]  # every rank creates every group, in order
    own = singletons[ctx.rank]
    groups = [ctx.world_group, own] if ring_degree > 1 else [own, ctx.world_group]
    layout = torch.arange(ctx.world_size).view(ring_degree, ulysses_degree)
    return DeviceMesh.from_group(groups, ctx.device.type, mesh=layout, mesh_dim_names=("ring", "ulysses"))


def _accelerator_free_host():
    """diffusers 0.42.1's `_resolve_parallel_config` records `rank % torch.accelerator.device_count()` as the device,
    which divides by zero on a host without an accelerator (the value is only recorded; our mesh is passed in)."""
    if torch.accelerator.device_count() > 0:
        return nullcontext()
    return mock.patch.object(torch.accelerator, "device_count", lambda: 1)


class ContextParallelDenoiser:
    """`ctx.config.method` (ulysses or ring over all ranks) applied to `model` in place by diffusers' hooks."""

    def __init__(self, model: nn.Module, ctx: ParallelContext):
        method = ctx.config.method
        problem = context_parallel_problem(type(model), method)
        if problem:
            raise UnsupportedModelError(problem)
        degree = ctx.world_size
        heads = getattr(model.config, "num_attention_heads", None)
        if method is ParallelMethod.ULYSSES and heads is not None and heads % degree:
            raise UnsupportedModelError(
                f"ulysses gives each of the {degree} ranks an equal share of the attention heads: "
                f"{type(model).__name__} has {heads}; use a world_size that divides it, or ring"
            )
        if method is ParallelMethod.RING and (ctx.device.type != "cuda" or model.dtype not in _HALF):
            raise UnsupportedModelError(
                f"ring attention in diffusers needs a CUDA attention backend that returns the log-sum-exp "
                f"({RING_ATTENTION_BACKEND}, flash or sage: float16/bfloat16 on CUDA); this model is "
                f"{model.dtype} on {ctx.device}, where the native backend raises 'Native attention does not "
                "support return_lse=True'. Use ulysses, or ring with dtype float16/bfloat16 on cuda"
            )
        self.model = model
        self.plan = type(model)._cp_plan
        ring, ulysses = (degree, 1) if method is ParallelMethod.RING else (1, degree)
        self.sets_backend = method is ParallelMethod.RING
        if self.sets_backend:
            model.set_attention_backend(RING_ATTENTION_BACKEND)
        config = ContextParallelConfig(ring_degree=ring, ulysses_degree=ulysses, mesh=_mesh(ctx, ring, ulysses))
        with _accelerator_free_host():
            model.enable_parallelism(config=config)
        # Before diffusers' hooks: a sequence that does not split evenly is refused on every rank alike (the shapes
        # are the same everywhere), instead of tripping diffusers' assert inside one collective.
        self._check = model.register_forward_pre_hook(self._check_split, with_kwargs=True)

    def _check_split(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        degree = self.model._parallel_config.context_parallel_config._flattened_mesh.size()
        for name, split in self.plan.get("", {}).items():
            value = kwargs.get(name)
            if not isinstance(split, ContextParallelInput) or split.split_output or not torch.is_tensor(value):
                continue
            if split.expected_dims is not None and value.dim() != split.expected_dims:
                continue  # diffusers leaves such an input whole
            length = value.shape[split.split_dim]
            if length % degree:
                raise SequenceSplitError(
                    f"{type(module).__name__} input {name!r} has {length} tokens along dim {split.split_dim}, "
                    f"which do not split into {degree} equal shards: choose an image size whose token count "
                    f"(and a max_sequence_length whose text length) is a multiple of {degree}"
                )

    def begin_call(self) -> None:
        pass

    def end_call(self) -> None:
        pass

    def remove(self) -> None:
        """Undo what enable_parallelism did (diffusers has no disable): its hooks, and the config it recorded."""
        self._check.remove()
        remove_context_parallel(self.model, self.plan)
        for module in self.model.modules():
            processor = getattr(module, "processor", None)
            if getattr(processor, "_parallel_config", None) is not None:
                processor._parallel_config = None
        self.model._parallel_config = None
        if self.sets_backend:
            self.model.reset_attention_backend()
