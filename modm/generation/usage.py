"""What a model replica used, for the cost per image: busy seconds (time with at least one image in compute, so a
batch's images share it) and, where NVML is available, the joules its GPU drew. Pure bookkeeping; the clock and the
NVML module are passed in (pynvml is optional: on a CPU, or without it, energy is absent, never 0)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, Iterator

logger = logging.getLogger(__name__)

__all__ = ["EnergyMeter", "ReplicaUsage"]


class EnergyMeter:
    """Joules one GPU drew since the meter started, from NVML's total-energy counter (millijoules; Volta and newer)."""

    def __init__(self, nvml: Any, handle: Any):
        self._nvml, self._handle = nvml, handle
        self._start_mj = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)

    @classmethod
    def for_device(cls, device: str, nvml: Any | None = None) -> "EnergyMeter | None":
        """A meter for 'cuda' / 'cuda:N' where NVML reads its energy; None elsewhere (CPU, no pynvml, old GPU)."""
        if not device.startswith("cuda"):
            return None
        try:
            if nvml is None:
                import pynvml as nvml
            nvml.nvmlInit()
            index = int(device.split(":", 1)[1]) if ":" in device else 0
            return cls(nvml, nvml.nvmlDeviceGetHandleByIndex(index))
        except Exception as err:  # ImportError, NVMLError (no driver, counter not supported)
            logger.info("no energy counter for %s: %r", device, err)
            return None

    def joules(self) -> float:
        return (self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) - self._start_mj) / 1000.0


class ReplicaUsage:
    def __init__(self, energy: EnergyMeter | None = None, clock: Callable[[], float] = time.monotonic):
        self.energy, self.clock = energy, clock
        self.started = clock()
        self.images = 0
        self._busy_s = 0.0
        self._active = 0
        self._since = 0.0

    @contextmanager
    def computing(self) -> Iterator[None]:
        """Around one image's compute; overlapping calls (a batch) count their union once."""
        if self._active == 0:
            self._since = self.clock()
        self._active += 1
        ok = False
        try:
            yield
            ok = True
        finally:
            self._active -= 1
            if self._active == 0:
                self._busy_s += self.clock() - self._since
            self.images += ok

    def busy_s(self) -> float:
        return self._busy_s + (self.clock() - self._since if self._active else 0.0)

    def as_dict(self) -> dict:
        """Busy and up seconds, images served, and joules (None without an energy counter)."""
        return {
            "images": self.images,
            "busy_s": self.busy_s(),
            "up_s": self.clock() - self.started,
            "energy_j": None if self.energy is None else self.energy.joules(),
        }
