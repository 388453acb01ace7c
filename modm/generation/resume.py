"""Stopping and resuming a text-to-image run part-way, for NIRVANA's latent cache.

NIRVANA keeps the large model's latents after steps k of T and serves a similar prompt by running only the
remaining T - k steps from them. Both halves go through the pipeline's own `__call__`:

- `LatentSnapshots` is a `callback_on_step_end` that copies the latents after the chosen steps;
- `schedule_from_step` makes the pipeline's scheduler drop its first k timesteps the way diffusers' own img2img
  pipelines do (`timesteps[k:]` plus `set_begin_index(k)`), so the pipeline runs the tail of the same schedule
  from the latents it is given. The shift/`mu` logic of flow-matching schedulers is left to the scheduler.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

__all__ = ["LatentSnapshots", "schedule_from_step"]


class LatentSnapshots:
    """Callback for `callback_on_step_end`: latents after each step count in `steps` (1-based), on the CPU."""

    def __init__(self, steps: Iterable[int]):
        self.steps = frozenset(int(s) for s in steps)
        if not self.steps or min(self.steps) <= 0:
            raise ValueError(f"snapshot steps must be positive, got {sorted(self.steps)}")
        self.latents: dict[int, torch.Tensor] = {}

    def __call__(self, pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        done = step_index + 1  # the callback runs after step `step_index` (0-based) completed
        if done in self.steps:
            self.latents[done] = callback_kwargs["latents"].detach().to("cpu", copy=True)
        return {}


@contextmanager
def schedule_from_step(scheduler, start: int) -> Iterator[None]:
    """While active, `scheduler.set_timesteps(...)` leaves out the first `start` steps of the schedule it sets."""
    if start < 0:
        raise ValueError(f"start step must be >= 0, got {start}")
    if start == 0:
        yield
        return
    if not hasattr(scheduler, "set_begin_index"):
        raise ValueError(f"{type(scheduler).__name__} cannot start part-way through its schedule")
    original = scheduler.set_timesteps

    def set_timesteps(*args, **kwargs):
        original(*args, **kwargs)
        order = getattr(scheduler, "order", 1)
        if start * order >= len(scheduler.timesteps):
            raise ValueError(f"cannot resume after step {start} of a {len(scheduler.timesteps) // order}-step run")
        scheduler.timesteps = scheduler.timesteps[start * order:]
        scheduler.set_begin_index(start * order)

    scheduler.set_timesteps = set_timesteps  # an instance attribute: shadows the method for this run only
    try:
        yield
    finally:
        del scheduler.set_timesteps
