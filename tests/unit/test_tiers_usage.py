"""The cost-per-image bookkeeping of a model replica (modm.generation.usage): busy time as the union of overlapping
computes, images counted when they finish, joules from NVML's counter or absent."""

import pytest

from modm.generation.usage import EnergyMeter, ReplicaUsage


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class FakeNvml:
    def __init__(self, supported=True):
        self.supported, self.millijoules, self.inited = supported, 5_000_000, False

    def nvmlInit(self):
        self.inited = True

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("gpu", index)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.supported:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return self.millijoules


def test_busy_time_is_the_union_of_overlapping_computes_and_failures_serve_no_image():
    clock = Clock()
    usage = ReplicaUsage(clock=clock)
    with usage.computing():  # a batch of two: 10 s busy, not 20
        with usage.computing():
            clock.now += 10.0
    clock.now += 30.0  # idle
    with pytest.raises(ValueError), usage.computing():
        clock.now += 5.0
        raise ValueError("a failed generation")
    stats = usage.as_dict()
    assert stats == {"images": 2, "busy_s": 15.0, "up_s": 45.0, "energy_j": None}


def test_energy_from_nvml_or_absent():
    nvml = FakeNvml()
    meter = EnergyMeter.for_device("cuda:1", nvml=nvml)
    assert nvml.inited and meter._handle == ("gpu", 1)
    nvml.millijoules += 250_000
    assert meter.joules() == pytest.approx(250.0)
    assert ReplicaUsage(meter).as_dict()["energy_j"] == pytest.approx(250.0)  # since the meter started
    assert EnergyMeter.for_device("cpu", nvml=nvml) is None  # off on a CPU
    assert EnergyMeter.for_device("cuda", nvml=FakeNvml(supported=False)) is None  # a GPU without the counter
