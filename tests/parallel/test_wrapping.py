"""In-process checks: which layers the walkers swap, unsupported models, world size 1, rendezvous timeout."""

from __future__ import annotations

import time

import pytest
import torch
import torch.distributed as dist
from diffusers import UNet2DConditionModel
from torch import nn

from modm.parallel import (
    ParallelConfig,
    ParallelConfigError,
    ParallelContext,
    ParallelPipeline,
    RendezvousError,
    UnsupportedModelError,
    init_parallel,
    parallelize_denoiser,
    rank_layout,
)
from modm.parallel.asyncdiff import AsyncDiffModel, AsyncUnit, denoiser_units
from modm.parallel.distrifusion import (
    CommManager,
    DistriConv2d,
    DistriCrossAttention,
    DistriGroupNorm,
    DistriSelfAttention,
    wrap_unet,
)
from spawn import free_port
from tiny import tiny_sdxl_pipeline


def _unet(down=("DownBlock2D", "CrossAttnDownBlock2D"), up=("CrossAttnUpBlock2D", "UpBlock2D")):
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=8,
        norm_num_groups=4,
        attention_head_dim=2,
    )


def _offline_ctx(**overrides) -> ParallelContext:
    """A rank-0-of-2 context without a process group: enough to wrap (wrapping never communicates)."""
    cfg = ParallelConfig(world_size=2, **overrides)
    return ParallelContext(
        cfg,
        rank=0,
        world_size=2,
        device=torch.device("cpu"),
        backend="gloo",
        layout=rank_layout(0, 2, cfg.cfg_split),
        world_group=None,
        patch_group=None,
    )


def test_wrap_unet_swaps_every_spatial_layer_and_remove_restores_them():
    unet = _unet()
    before = dict(unet.named_modules())
    parallel = wrap_unet(unet, _offline_ctx(method="distrifusion"))
    wrapped = dict(unet.named_modules())
    convs = [m for m in wrapped.values() if isinstance(m, DistriConv2d)]
    k_by_k = [n for n, m in before.items() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    assert len(convs) == len(k_by_k) and [c.is_first_layer for c in convs].count(True) == 1
    assert isinstance(wrapped["conv_in"], DistriConv2d) and wrapped["conv_in"].is_first_layer
    assert sum(isinstance(m, DistriGroupNorm) for m in wrapped.values()) == sum(
        isinstance(m, nn.GroupNorm) for m in before.values()
    )
    assert any(isinstance(m, DistriSelfAttention) for m in wrapped.values())
    assert any(isinstance(m, DistriCrossAttention) for m in wrapped.values())
    assert wrapped["conv_in"].weight is before["conv_in"].weight  # attributes read through to the wrapped layer
    parallel.remove()
    assert dict(unet.named_modules()).keys() == before.keys()
    assert all(unet.get_submodule(n) is m for n, m in before.items() if n)


def test_unsupported_attention_block_is_rejected_and_the_model_left_intact():
    unet = _unet(down=("DownBlock2D", "AttnDownBlock2D"), up=("AttnUpBlock2D", "UpBlock2D"))
    before = {n: m for n, m in unet.named_modules()}
    with pytest.raises(
        UnsupportedModelError, match="down_blocks.1.attentions.0: a diffusers Attention under ModuleList"
    ):
        wrap_unet(unet, _offline_ctx(method="distrifusion"))
    assert all(unet.get_submodule(n) is m for n, m in before.items() if n)


@pytest.mark.parametrize("method", ["distrifusion", "naive_patch"])
def test_unsupported_model_class_is_rejected(method):
    with pytest.raises(UnsupportedModelError, match="got Linear"):
        parallelize_denoiser(nn.Linear(2, 2), _offline_ctx(method=method))


def test_asyncdiff_rejects_unsupported_models_and_too_many_components():
    with pytest.raises(UnsupportedModelError, match="got Linear"):
        parallelize_denoiser(nn.Linear(2, 2), _offline_ctx(method="asyncdiff", model_n=2))
    with pytest.raises(ParallelConfigError, match="stride 2 needs"):
        cfg = ParallelConfig(method="asyncdiff", world_size=3, model_n=2, stride=2)
        AsyncDiffModel(
            _unet(), ParallelContext(cfg, 0, 3, torch.device("cpu"), "gloo", rank_layout(0, 3, False), None, None)
        )


def test_asyncdiff_units_follow_execution_order_and_given_costs_set_the_split():
    unet = _unet()
    keys = [u.key for u in denoiser_units(unet)]
    assert keys[0] == "conv_in" and keys[-1] == "conv_out" and "mid_block" in keys
    assert keys.index("down_blocks.1.resnets.0") < keys.index("down_blocks.1.attentions.0") < keys.index("mid_block")
    costs = [1.0] * len(keys)
    costs[keys.index("mid_block")] = 10.0
    runner = AsyncDiffModel(unet, _offline_ctx(method="asyncdiff", model_n=2), unit_costs=costs)
    (a0, b0), (a1, b1) = runner.components
    assert a0 == 0 and b1 == len(keys) and b0 == a1
    assert isinstance(unet.conv_in, AsyncUnit) and unet.mid_block.has_cross_attention
    runner.remove()
    assert isinstance(unet.conv_in, nn.Conv2d)


def test_comm_manager_registration_rules():
    comm = CommManager(group=None, group_size=2, my_index=0, comm_checkpoint=2)
    a = comm.slot("a", torch.zeros(2, 3))
    assert comm.slot("a", torch.zeros(2, 3)) == a and comm.slot("b", torch.zeros(4)) == a + 1
    with pytest.raises(RuntimeError, match="changed shape"):
        comm.slot("a", torch.zeros(3, 3))
    with pytest.raises(RuntimeError, match="one dtype"):
        comm.slot("c", torch.zeros(1, dtype=torch.float64))
    comm.allocate(torch.device("cpu"))
    assert [tuple(v.shape) for v in comm.peer_views(a)] == [(2, 3), (2, 3)]
    with pytest.raises(RuntimeError, match="after the buffers were allocated"):
        comm.slot("d", torch.zeros(1))


def test_single_rank_needs_no_process_group_and_method_none_is_the_plain_pipeline(clip_tokenizer):
    ctx = init_parallel(ParallelConfig(), rank=0, world_size=1)
    assert ctx.world_group is None and not dist.is_initialized()
    pipe = tiny_sdxl_pipeline(clip_tokenizer)
    kwargs = dict(prompt="a cat", num_inference_steps=2, height=64, width=64, output_type="pt")
    expected = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    got = ParallelPipeline(pipe, ctx)(**kwargs, generator=torch.Generator().manual_seed(0)).images
    assert torch.equal(got, expected)


def test_multi_rank_pipeline_demands_a_seeded_generator(clip_tokenizer):
    parallel = ParallelPipeline(tiny_sdxl_pipeline(clip_tokenizer), _offline_ctx(method="distrifusion"))
    with pytest.raises(ParallelConfigError, match="seeded `generator`"):
        parallel(prompt="a cat", num_inference_steps=2, height=64, width=64)
    parallel.remove()


def test_world_size_must_match_the_config():
    with pytest.raises(ParallelConfigError, match="does not match"):
        init_parallel(ParallelConfig(method="distrifusion", world_size=2), rank=0, world_size=4, init_method="env://")


@pytest.mark.timeout(60)
def test_missing_rank_at_rendezvous_fails_within_the_timeout():
    cfg = ParallelConfig(method="distrifusion", world_size=2)
    started = time.monotonic()
    with pytest.raises(RendezvousError, match="rank 0 could not form a gloo process group of 2 ranks"):
        init_parallel(cfg, rank=0, world_size=2, init_method=f"tcp://127.0.0.1:{free_port()}", timeout_s=2)
    assert time.monotonic() - started < 20
    assert not dist.is_initialized()


def _wrapper_kwargs(patch_index: int, **cfg) -> dict:
    from modm.parallel.distrifusion import PatchStepState

    state = PatchStepState(ParallelConfig(method="distrifusion", world_size=2, **cfg))
    return dict(comm=CommManager(None, 2, patch_index, 60), state=state, patch_index=patch_index, patch_world_size=2)


@pytest.mark.parametrize("stride", [1, 2])
def test_first_layer_conv_cuts_its_rows_from_the_full_input(stride):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, stride=stride, padding=1)
    x = torch.randn(2, 3, 16, 12)
    full = conv(x)
    half = full.shape[2] // 2
    for index in range(2):
        wrapper = DistriConv2d(conv, is_first_layer=True, key="conv_in", **_wrapper_kwargs(index))
        torch.testing.assert_close(wrapper(x), full[:, :, index * half : (index + 1) * half])


def test_separate_groupnorm_past_warmup_is_groupnorm_of_the_stripe():
    torch.manual_seed(0)
    norm = nn.GroupNorm(4, 16)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    kwargs = _wrapper_kwargs(1, groupnorm_mode="separate", warmup_steps=1)
    kwargs["state"].step = 3  # past the warm-up: no communication in this mode
    stripe = torch.randn(2, 16, 8, 8) * 3 + 1
    torch.testing.assert_close(DistriGroupNorm(norm, key="norm", **kwargs)(stripe), norm(stripe))


def test_convs_that_break_the_halo_rule_are_rejected():
    with pytest.raises(UnsupportedModelError, match="height padding 0"):
        DistriConv2d(nn.Conv2d(3, 3, 3, padding=0), key="down", **_wrapper_kwargs(0))
    with pytest.raises(UnsupportedModelError, match="dilation"):
        DistriConv2d(nn.Conv2d(3, 3, 3, padding=2, dilation=2), key="dil", **_wrapper_kwargs(0))
