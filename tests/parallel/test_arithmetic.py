"""Configs, splits, row ranges, cost balancing and the AsyncDiff schedule: pure functions, no processes."""

from __future__ import annotations

import itertools

import pytest
import torch

from modm.parallel import (
    GroupNormMode,
    ParallelConfig,
    ParallelConfigError,
    ParallelMethod,
    PatchSplitError,
    balanced_contiguous_split,
    check_patch_divisible,
    rank_layout,
    row_range,
)
from modm.parallel.asyncdiff import TimestepChoice, step_plan
from modm.parallel.asyncdiff.structure import describe, flatten_into, rebuild


# -- ParallelConfig ---------------------------------------------------------------------------------------------------
def test_config_defaults_and_enums():
    cfg = ParallelConfig(method="distrifusion", world_size=4, groupnorm_mode="stale")
    assert cfg.method is ParallelMethod.DISTRIFUSION and cfg.groupnorm_mode is GroupNormMode.STALE
    assert cfg.comm_checkpoint == 60 and cfg.is_patch_method


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        (dict(method="none", world_size=2), "method 'none' runs on one rank"),
        (dict(method="asyncdiff", world_size=2, model_n=3), "needs world_size model_n + stride - 1 = 3, got 2"),
        (dict(method="asyncdiff", world_size=3, model_n=2, stride=2, warmup_steps=0), "warmup_steps >= 1"),
        (dict(method="asyncdiff", world_size=2, cfg_split=True), "cfg_split is not supported"),
        (dict(method="distrifusion", world_size=3, cfg_split=True), "even world_size"),
    ],
)
def test_config_rejects_inconsistent_settings(kwargs, fragment):
    # pydantic reports validator errors as ValidationError (a ValueError) carrying our message
    with pytest.raises(ValueError, match=fragment.replace("+", r"\+")):
        ParallelConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(stride=3),
        dict(world_size=0),
        dict(method="tensor"),
        dict(groupnorm_mode="sync_gn"),
        dict(unknown=1),
        dict(comm_checkpoint=0),
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        ParallelConfig(**kwargs)


# -- layout and rows --------------------------------------------------------------------------------------------------
def test_rank_layout_without_cfg_split():
    layouts = [rank_layout(r, 4, cfg_split=False) for r in range(4)]
    assert [lay.patch_index for lay in layouts] == [0, 1, 2, 3]
    assert all(lay.patch_group_ranks == (0, 1, 2, 3) and lay.batch_index == 0 for lay in layouts)


def test_rank_layout_with_cfg_split_puts_halves_on_rank_halves():
    layouts = [rank_layout(r, 4, cfg_split=True) for r in range(4)]
    assert [lay.batch_index for lay in layouts] == [0, 0, 1, 1]
    assert [lay.patch_index for lay in layouts] == [0, 1, 0, 1]
    assert layouts[3].patch_group_ranks == (2, 3) and layouts[0].all_patch_groups == ((0, 1), (2, 3))
    assert rank_layout(1, 2, cfg_split=True).patch_world_size == 1  # 2 ranks + CFG split = pure CFG parallelism


@pytest.mark.parametrize("rank,world,cfg_split", [(2, 2, False), (-1, 2, False), (0, 3, True)])
def test_rank_layout_rejects_bad_ranks(rank, world, cfg_split):
    with pytest.raises(ParallelConfigError):
        rank_layout(rank, world, cfg_split)


def test_row_ranges_tile_the_height():
    ranges = [row_range(64, 4, i) for i in range(4)]
    assert ranges == [(0, 16), (16, 32), (32, 48), (48, 64)]
    with pytest.raises(PatchSplitError, match="cannot be cut into 3"):
        row_range(64, 3, 0)


def test_smallest_feature_map_must_split():
    check_patch_divisible(latent_height=128, downsample_factor=8, parts=8)  # SDXL 1024 px on 8 ranks: 16 rows
    with pytest.raises(PatchSplitError, match="smallest feature map has 12 rows"):
        check_patch_divisible(latent_height=96, downsample_factor=8, parts=8)  # distrifuser issue #17
    with pytest.raises(PatchSplitError, match="not a multiple"):
        check_patch_divisible(latent_height=100, downsample_factor=8, parts=1)


# -- cost balancing ---------------------------------------------------------------------------------------------------
def _brute_force_best(costs, parts):
    n = len(costs)
    best = float("inf")
    for cuts in itertools.combinations(range(1, n), parts - 1):
        bounds = (0,) + cuts + (n,)
        best = min(best, max(sum(costs[a:b]) for a, b in zip(bounds, bounds[1:])))
    return best


@pytest.mark.parametrize(
    "costs,parts",
    [
        ([1, 1, 1, 1], 2),
        ([5, 1, 1, 1, 1, 1], 2),
        ([1, 2, 3, 4, 5, 6, 7, 8], 3),
        ([3, 0, 0, 9, 1], 4),
        ([0.2, 4.0, 4.1, 0.3, 2.2, 2.1, 0.1], 3),
    ],
)
def test_balanced_split_is_optimal_contiguous_and_complete(costs, parts):
    ranges = balanced_contiguous_split(costs, parts)
    assert len(ranges) == parts and ranges[0][0] == 0 and ranges[-1][1] == len(costs)
    assert all(a < b for a, b in ranges) and all(r[1] == s[0] for r, s in zip(ranges, ranges[1:]))
    assert max(sum(costs[a:b]) for a, b in ranges) == pytest.approx(_brute_force_best(costs, parts))


def test_balanced_split_rejects_impossible_requests():
    with pytest.raises(ParallelConfigError, match="cannot split 2 blocks into 3"):
        balanced_contiguous_split([1, 1], 3)
    with pytest.raises(ParallelConfigError, match="non-negative"):
        balanced_contiguous_split([1, -1, 2], 2)


# -- AsyncDiff schedule -----------------------------------------------------------------------------------------------
def test_warmup_steps_compute_everything_and_cache_on_the_last():
    plans = [step_plan(s, rank=1, warmup_steps=3, model_n=2, stride=1, time_shift=False) for s in range(3)]
    assert all(p.compute_all and p.output_source is None for p in plans)
    assert [p.store_cache for p in plans] == [False, False, True]


def test_stride_one_each_rank_computes_its_component():
    for rank in range(3):
        plan = step_plan(5, rank=rank, warmup_steps=2, model_n=3, stride=1, time_shift=True)
        assert plan.compute == {rank} and plan.sync_caches_first and plan.output_source == 2
        assert plan.timestep is TimestepChoice.PREVIOUS


def test_stride_two_alternates_compute_and_reuse():
    world = [step_plan(2, rank=r, warmup_steps=2, model_n=2, stride=2, time_shift=False) for r in range(3)]
    assert [p.compute for p in world] == [{0}, {1}, {1}]  # extra rank 2 runs the last component
    assert [p.timestep for p in world] == [TimestepChoice.NEXT, TimestepChoice.NEXT, TimestepChoice.CURRENT]
    assert [p.store_cache for p in world] == [True, True, False] and {p.output_source for p in world} == {2}
    reuse = [step_plan(3, rank=r, warmup_steps=2, model_n=2, stride=2, time_shift=False) for r in range(3)]
    assert all(not p.compute and p.sync_caches_first and p.output_source is None for p in reuse)


# -- cached output structure ------------------------------------------------------------------------------------------
def test_output_structure_round_trip():
    output = (torch.randn(2, 3), None, [torch.arange(4.0).view(2, 2), (torch.ones(1),)])
    structure = describe(output)
    flat = torch.empty(structure.numel)
    flatten_into(output, flat)
    back = rebuild(structure, flat)
    assert back[1] is None and isinstance(back[2], list) and isinstance(back[2][1], tuple)
    assert torch.equal(back[0], output[0]) and torch.equal(back[2][0], output[2][0])
    with pytest.raises(TypeError, match="cannot cache"):
        describe({"a": torch.ones(1)})
