"""Stopping and resuming a text-to-image run part-way, for NIRVANA's latent cache.

NIRVANA keeps the large model's latents after steps k of T and serves a similar prompt by running only the
remaining T - k steps from them. Both halves go through the pipeline's own `__call__`:

- `LatentSnapshots` is a `callback_on_step_end` that copies the latents after the chosen steps;
- `schedule_from_step` makes the pipeline's scheduler set only the tail of its schedule (timesteps and sigmas from
  step k on, begin index 0), so the pipeline runs the tail of the same schedule from the latents it is given,
  whatever it does to the begin index. The shift/`mu` logic of flow-matching schedulers is left to the scheduler.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
import functools
from contextlib import contextmanager

import torch

__all__ = ["LatentSnapshots", "schedule_from_step", "tail_schedule_problem"]


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
    """While active, `scheduler.set_timesteps(...)` sets only the schedule's tail from step `start` on.

    The tail is cut from the schedule's timesteps *and* sigmas, and the begin index is 0, so the scheduler's own
    state is that of a run whose first step is step `start`. Pipelines that reset the begin index themselves
    (FluxPipeline calls `set_begin_index(0)`) then still run the tail: cutting only the timesteps and setting
    `set_begin_index(start)`, as diffusers' img2img pipelines do, leaves such a pipeline stepping along the head of
    the sigmas and stopping at a non-zero sigma.
    """
    if start < 0:
        raise ValueError(f"start step must be >= 0, got {start}")
    if start == 0:
        yield
        return
    problem = tail_schedule_problem(scheduler)
    if problem:
        raise ValueError(f"{type(scheduler).__name__} cannot start part-way through its schedule: {problem}")
    original = scheduler.set_timesteps

    @functools.wraps(original)  # keeps the signature: pipelines inspect it for `sigmas`/`timesteps`
    def set_timesteps(*args, **kwargs):
        original(*args, **kwargs)
        cut = start * scheduler.order
        if cut >= len(scheduler.timesteps):
            raise ValueError(
                f"cannot resume after step {start} of a {len(scheduler.timesteps) // scheduler.order}-step run"
            )
        sigmas = getattr(scheduler, "sigmas", None)
        if sigmas is not None and len(sigmas) not in (len(scheduler.timesteps), len(scheduler.timesteps) + 1):
            raise ValueError(
                f"{type(scheduler).__name__} has {len(sigmas)} sigmas for "
                f"{len(scheduler.timesteps)} timesteps: cannot cut them at one step"
            )
        scheduler.timesteps = scheduler.timesteps[cut:]
        if sigmas is not None:
            scheduler.sigmas = sigmas[cut:]
        scheduler.set_begin_index(0)

    scheduler.set_timesteps = set_timesteps  # an instance attribute: shadows the method for this run only
    try:
        yield
    finally:
        del scheduler.set_timesteps


def tail_schedule_problem(scheduler) -> str | None:
    """Why `schedule_from_step` cannot cut this scheduler's schedule, or None when it can."""
    if not hasattr(scheduler, "set_begin_index"):
        return "it has no set_begin_index"
    if getattr(scheduler, "order", 1) != 1:
        return f"it takes {scheduler.order} model calls per step (only single-call steps can be cut)"
    return None
