"""Step control: stop a running generation at its next denoising step, and count the steps it ran.

A pipeline calls `callback_on_step_end` after every denoising step; raising there leaves the loop at once (setting
the pipeline's `_interrupt` would instead skip the remaining steps and still decode, and it is shared by every call on
the same pipeline object). A parallel generation agrees on the stop across its ranks (`modm.parallel.CollectiveStop`,
a subclass); a generation that runs elsewhere forwards the stop there (`on_stop`).
"""

from __future__ import annotations

import threading
from typing import Callable

__all__ = ["GenerationInterrupted", "StepControl"]


class GenerationInterrupted(Exception):
    """Raised out of a pipeline call whose StepControl was stopped; the image is abandoned."""

    def __init__(self, message: str, *, steps_run: int = 0):
        super().__init__(message)
        # An instance attribute only: Ray's wrapper of a remote error finds it on the original through __getattr__.
        self.steps_run = steps_run


class StepControl:
    """Lets another thread stop a running generation at its next denoising step, and counts the steps it ran.

    `on_stop`: called by `stop()` as well, e.g. to forward the stop to the processes that run the generation (which
    then report `steps_run` back).
    """

    def __init__(self, on_stop: Callable[[], None] | None = None):
        self.stop_event = threading.Event()
        self.steps_run = 0
        self._on_stop = on_stop

    def stop(self) -> None:
        self.stop_event.set()
        if self._on_stop is not None:
            self._on_stop()

    def should_stop(self) -> bool:
        """Asked after every step; a subclass may make the ranks of a parallel generation agree."""
        return self.stop_event.is_set()

    def interrupted(self) -> GenerationInterrupted:
        return GenerationInterrupted(f"stopped after denoising step {self.steps_run}", steps_run=self.steps_run)

    def on_step_end(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        """diffusers' `callback_on_step_end`."""
        self.steps_run += 1
        if self.should_stop():
            raise self.interrupted()
        return {}
