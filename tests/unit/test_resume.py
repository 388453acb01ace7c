"""NIRVANA's stop-and-resume through the pipeline's own __call__: a run resumed from its own snapshot after step k
must end where the uninterrupted run ends."""

import numpy as np
import pytest
import torch

from modm.config import ModelSpec
from modm.generation import DiffusionGenerator, GenerationRequest, InvalidRequestError
from modm.generation.resume import LatentSnapshots, schedule_from_step


@pytest.fixture(scope="module")
def large(tiny_zoo):
    return DiffusionGenerator.from_spec(
        ModelSpec(source=str(tiny_zoo.large), device="cpu", default_size=64, max_size=256), "large"
    )


def _request(prompt="a red fox in the snow", steps=10, seed=3):
    return GenerationRequest(prompt=prompt, width=64, height=64, steps=steps, seed=seed)


def test_resuming_from_a_snapshot_reproduces_the_full_run(large):
    large.check_resumable()
    full, snapshots = large.txt2img_with_snapshots(_request(), (2, 5, 8))
    assert sorted(snapshots) == [2, 5, 8]
    assert all(s.shape == snapshots[2].shape and s.device.type == "cpu" for s in snapshots.values())
    assert not torch.equal(snapshots[2], snapshots[5])  # they are different points of the run
    plain = large.txt2img(_request())
    assert np.array_equal(np.asarray(full), np.asarray(plain))  # taking snapshots changes nothing
    for k, latents in snapshots.items():
        resumed = large.resume(_request(), latents, k)
        diff = np.abs(np.asarray(resumed, dtype=np.int16) - np.asarray(full, dtype=np.int16))
        assert diff.max() <= 1, f"resumed after step {k} differs by {diff.max()}"


def test_resuming_for_another_prompt_gives_another_image(large):
    full, snapshots = large.txt2img_with_snapshots(_request(), (5,))
    other = large.resume(_request(prompt="a lighthouse at dusk, oil painting"), snapshots[5], 5)
    assert not np.array_equal(np.asarray(full), np.asarray(other))


def test_schedule_is_restored_after_a_resume(large):
    scheduler = large.pipe.scheduler
    with schedule_from_step(scheduler, 4):
        scheduler.set_timesteps(10)
        assert len(scheduler.timesteps) == 6
    scheduler.set_timesteps(10)
    assert len(scheduler.timesteps) == 10 and "set_timesteps" not in vars(scheduler)


def test_bad_resume_and_snapshot_requests_are_named(large):
    with pytest.raises(InvalidRequestError, match="not inside a 10-step run"):
        large.txt2img_with_snapshots(_request(), (5, 10))
    latents = torch.zeros(1, 4, 8, 8)
    with pytest.raises(InvalidRequestError, match="cannot resume after step 10"):
        large.resume(_request(), latents, 10)
    with pytest.raises(InvalidRequestError, match="not one image's latents"):
        large.resume(_request(), torch.zeros(2, 4, 8, 8), 5)
    with pytest.raises(ValueError, match="positive"):
        LatentSnapshots([0, 5])
