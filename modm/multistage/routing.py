"""Timestep → stage routing as pure functions, and stage-grouped evaluation of a mixed batch.

The paper's models pick one decoder from the batch's first timestep, so a batch must be stage-homogeneous. Here
each sample is routed on its own: the batch is split into one group per stage, each group goes to its stage's
function, and the outputs are put back in the original order.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

__all__ = ["apply_by_stage", "broadcast_timesteps", "group_by_stage", "route_timesteps"]


def broadcast_timesteps(timestep: torch.Tensor | float | int, batch_size: int, device=None) -> torch.Tensor:
    """A (batch_size,) tensor of timesteps from a scalar, a 0-d tensor or a (batch_size,) tensor."""
    t = torch.as_tensor(timestep, device=device)
    if t.ndim == 0:
        return t.reshape(1).expand(batch_size)
    if t.ndim == 1 and t.shape[0] in (1, batch_size):
        return t.expand(batch_size)
    raise ValueError(f"timestep must be a scalar or shaped ({batch_size},), got shape {tuple(t.shape)}")


def route_timesteps(timesteps: torch.Tensor, boundaries: Sequence[float]) -> torch.Tensor:
    """Stage index per timestep: k = number of boundaries ≤ t (stage 0 holds the smallest timesteps)."""
    bounds = torch.as_tensor(list(boundaries), dtype=torch.float64, device=timesteps.device)
    return torch.bucketize(timesteps.to(torch.float64), bounds, right=True)


def group_by_stage(stages: torch.Tensor, num_stages: int) -> list[tuple[int, torch.Tensor]]:
    """(stage, sample indices) for every stage present, in stage order."""
    groups = []
    for k in range(num_stages):
        index = torch.nonzero(stages == k).flatten()
        if len(index):
            groups.append((k, index))
    return groups


def apply_by_stage(
    stages: torch.Tensor, num_stages: int, stage_fn: Callable[[int, torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Run stage_fn(k, index) for each stage group and scatter the results back into batch order.

    stage_fn receives the sample indices of its group and returns that group's outputs (len(index), ...).
    """
    if stages.numel() and (int(stages.min()) < 0 or int(stages.max()) >= num_stages):
        raise ValueError(f"stage indices must lie in [0, {num_stages}), got {stages.unique().tolist()}")
    groups = group_by_stage(stages, num_stages)
    if not groups:
        raise ValueError("cannot route an empty batch")
    if len(groups) == 1:  # the common case while sampling: no copies
        return stage_fn(*groups[0])
    outputs = [(index, stage_fn(k, index)) for k, index in groups]
    first = outputs[0][1]
    result = first.new_empty((stages.shape[0],) + tuple(first.shape[1:]))
    for index, out in outputs:
        result[index] = out
    return result
