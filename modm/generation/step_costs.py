"""`StepCosts`: what one replica's denoising costs at each batch size it actually ran, measured as it serves.

A generator reports every pass of its model (`observe(batch_size, seconds, steps)`: one pipeline call of a batch for
the request-level engine, one denoiser forward for the step-level one, one generation when it does not batch). The
replica's capacity (`modm.policy.capacity`) is then read from the batch sizes it runs, not from a batch-1 profile.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

__all__ = ["StepCosts"]

SMOOTHING = 0.2  # weight of the newest pass in each batch size's moving average


class StepCosts:
    """Seconds per image-step (one image advanced by one denoising step) by batch size, smoothed, and the mean batch
    size of recent passes. Thread-safe: passes are reported from the worker thread that ran them."""

    def __init__(self, max_batch_size: int = 1):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.max_batch_size = max_batch_size
        self._seconds: dict[int, float] = {}
        self._passes: dict[int, int] = {}
        self._mean_batch_size: float | None = None
        self._lock = threading.Lock()
        self._listeners: list[Callable[[int], None]] = []

    def add_listener(self, listener: Callable[[int], None]) -> None:
        """`listener(batch_size)` after every pass (e.g. a batch-size histogram)."""
        self._listeners.append(listener)

    def observe(self, batch_size: int, seconds: float, steps: int) -> None:
        """One pass of `batch_size` images, each advanced `steps` denoising steps, took `seconds` (decoding and text
        encoding included: they are part of what a request costs)."""
        if batch_size < 1 or steps < 1 or not (math.isfinite(seconds) and seconds >= 0):
            return  # a pass that ran no step (stopped at once) says nothing about cost
        per_image_step = seconds / (batch_size * steps)
        with self._lock:
            old = self._seconds.get(batch_size)
            self._seconds[batch_size] = per_image_step if old is None else old + SMOOTHING * (per_image_step - old)
            self._passes[batch_size] = self._passes.get(batch_size, 0) + 1
            mean = self._mean_batch_size
            self._mean_batch_size = batch_size if mean is None else mean + SMOOTHING * (batch_size - mean)
        for listener in self._listeners:
            listener(batch_size)

    def as_dict(self) -> dict:
        """Plain numbers, for a Serve handle: {"max_batch_size", "mean_batch_size" (None before any pass),
        "seconds_per_image_step": {batch size: s}, "passes": {batch size: n}}."""
        with self._lock:
            return {
                "max_batch_size": self.max_batch_size,
                "mean_batch_size": self._mean_batch_size,
                "seconds_per_image_step": dict(self._seconds),
                "passes": dict(self._passes),
            }
