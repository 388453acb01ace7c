"""DistriFusion's synchronous warm-up counts steps as distrifuser does: `counter <= warmup_steps` is synchronous,
so a call runs warmup_steps + 1 synchronous steps (step 0 and warmup_steps "additional" ones)."""

import pytest

from modm.parallel import ParallelConfig
from modm.parallel.distrifusion import PatchStepState


def _synchronous_steps(steps: int, **cfg) -> list[int]:
    state = PatchStepState(ParallelConfig(method="distrifusion", world_size=2, **cfg))
    state.begin_call()
    sync = []
    for step in range(steps):  # PatchParallelModel advances `step` once per denoiser forward
        if state.synchronous:
            sync.append(step)
        state.step += 1
    return sync


@pytest.mark.parametrize("warmup_steps", [0, 1, 4, 9])
def test_synchronous_steps_match_distrifuser_counter(warmup_steps):
    distrifuser = [counter for counter in range(10) if counter <= warmup_steps]
    assert _synchronous_steps(10, warmup_steps=warmup_steps) == distrifuser
    assert len(_synchronous_steps(10, warmup_steps=warmup_steps)) == min(10, warmup_steps + 1)


def test_default_warmup_runs_five_synchronous_steps():
    assert len(_synchronous_steps(50)) == 5  # distrifuser's default warmup_steps=4


def test_always_synchronous_and_a_second_call_restart_the_count():
    assert _synchronous_steps(6, warmup_steps=0, always_synchronous=True) == list(range(6))
    state = PatchStepState(ParallelConfig(method="distrifusion", world_size=2, warmup_steps=1))
    state.step = 7
    state.begin_call()
    assert state.synchronous and state.call_index == 1
