"""Pure arithmetic of the splits: CFG halves, patch groups, row stripes, cost-balanced contiguous partitions.

No torch.distributed here, so every rule is tested without processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from modm.parallel.errors import ParallelConfigError, PatchSplitError

__all__ = [
    "RankLayout",
    "rank_layout",
    "row_range",
    "check_patch_divisible",
    "balanced_contiguous_split",
]


@dataclass(frozen=True)
class RankLayout:
    """Where one rank sits when the world is optionally cut into two CFG halves, each splitting the image."""

    batch_index: int  # 0 = unconditional half, 1 = conditional half (0 without cfg_split)
    num_batch_splits: int  # 2 with cfg_split, else 1
    patch_index: int  # which row stripe this rank owns inside its half
    patch_world_size: int  # ranks sharing one image (stripes per image)
    patch_group_ranks: tuple[int, ...]  # global ranks of this rank's half, in stripe order
    all_patch_groups: tuple[tuple[int, ...], ...]  # every half, in creation order (all ranks create all groups)


def rank_layout(rank: int, world_size: int, cfg_split: bool) -> RankLayout:
    """distrifuser's layout: with CFG split, ranks [0, w/2) take the unconditional half and [w/2, w) the other."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ParallelConfigError(f"rank {rank} is outside world_size {world_size}")
    splits = 2 if cfg_split else 1
    if world_size % splits:
        raise ParallelConfigError(f"cfg_split needs an even world_size, got {world_size}")
    per_half = world_size // splits
    groups = tuple(tuple(range(h * per_half, (h + 1) * per_half)) for h in range(splits))
    batch_index = rank // per_half
    return RankLayout(
        batch_index=batch_index,
        num_batch_splits=splits,
        patch_index=rank % per_half,
        patch_world_size=per_half,
        patch_group_ranks=groups[batch_index],
        all_patch_groups=groups,
    )


def row_range(height: int, parts: int, index: int) -> tuple[int, int]:
    """Rows [start, end) of stripe `index` when `height` rows are cut into `parts` equal stripes."""
    if parts < 1 or not 0 <= index < parts:
        raise PatchSplitError(f"stripe index {index} is outside {parts} stripes")
    if height % parts:
        raise PatchSplitError(f"height {height} cannot be cut into {parts} equal row stripes")
    rows = height // parts
    return index * rows, (index + 1) * rows


def check_patch_divisible(latent_height: int, downsample_factor: int, parts: int) -> None:
    """Every resolution level must split into equal stripes; the smallest (latent / factor) is the binding one.

    Equal stripes keep every collective the same size on all ranks (gloo cannot gather uneven tensors) and make
    averaged per-stripe GroupNorm statistics equal the whole-image ones.
    """
    if latent_height % downsample_factor:
        raise PatchSplitError(
            f"latent height {latent_height} is not a multiple of the model's downsampling factor {downsample_factor}"
        )
    smallest = latent_height // downsample_factor
    if smallest % parts:
        raise PatchSplitError(
            f"the smallest feature map has {smallest} rows (latent {latent_height} / {downsample_factor}), "
            f"which {parts} ranks cannot split into equal stripes; use a height whose latent is a multiple of "
            f"{downsample_factor * parts}"
        )


def balanced_contiguous_split(costs: Sequence[float], parts: int) -> list[tuple[int, int]]:
    """Cut `costs` (in execution order) into `parts` non-empty contiguous ranges minimising the largest sum.

    Classic linear partition by dynamic programming, O(parts * n^2) -- n is a few dozen blocks. Ties prefer
    earlier cuts, so the result is deterministic for identical inputs on every rank.
    """
    n = len(costs)
    if parts < 1:
        raise ParallelConfigError(f"parts must be >= 1, got {parts}")
    if n < parts:
        raise ParallelConfigError(f"cannot split {n} blocks into {parts} non-empty components")
    if any(c < 0 for c in costs):
        raise ParallelConfigError(f"costs must be non-negative, got {list(costs)}")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + float(c))
    inf = float("inf")
    # best[k][i]: minimal max-sum splitting the first i blocks into k parts; cut[k][i]: start of the last part.
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0.0
    for k in range(1, parts + 1):
        for i in range(k, n - (parts - k) + 1):
            for j in range(k - 1, i):
                value = max(best[k - 1][j], prefix[i] - prefix[j])
                if value < best[k][i]:
                    best[k][i], cut[k][i] = value, j
    ranges, end = [], n
    for k in range(parts, 0, -1):
        start = cut[k][end]
        ranges.append((start, end))
        end = start
    return ranges[::-1]
