"""Timestep → stage routing as pure functions, checked with closure-style dummy models (diffusers' scheduler tests)."""

from __future__ import annotations

import pytest
import torch

from modm.multistage.routing import apply_by_stage, broadcast_timesteps, group_by_stage, route_timesteps

BOUNDARIES = (10.0, 20.0)


def dummy_model(stage: int):
    """A stage-specific closure in the style of diffusers' `dummy_model` (sample · t / (t + 1)), offset by stage."""

    def model(sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1, *([1] * (sample.ndim - 1))).to(sample.dtype)
        return sample * t / (t + 1) + 100.0 * stage

    return model


def test_route_timesteps_puts_boundaries_in_the_later_stage():
    t = torch.tensor([0, 9.99, 10, 19, 20, 999])
    assert route_timesteps(t, BOUNDARIES).tolist() == [0, 0, 1, 1, 2, 2]
    assert route_timesteps(t, ()).tolist() == [0] * 6


def test_mixed_batch_equals_per_sample_routing():
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(7, 2, 3, 3, generator=generator)
    t = torch.tensor([25, 3, 12, 10, 0, 999, 15])
    models = [dummy_model(k) for k in range(3)]
    stages = route_timesteps(t, BOUNDARIES)
    batched = apply_by_stage(stages, 3, lambda k, index: models[k](sample[index], t[index]))
    one_by_one = torch.cat(
        [models[int(route_timesteps(t[i : i + 1], BOUNDARIES))](sample[i : i + 1], t[i : i + 1]) for i in range(len(t))]
    )
    torch.testing.assert_close(batched, one_by_one)
    # The offset reveals which model produced each row: stages 2, 0, 1, 1, 0, 2, 1.
    assert (batched - sample * (t / (t + 1)).reshape(-1, 1, 1, 1)).mean((1, 2, 3)).round().tolist() == [
        200.0,
        0.0,
        100.0,
        100.0,
        0.0,
        200.0,
        100.0,
    ]


def test_each_stage_function_is_called_once_with_its_own_samples():
    calls = []
    stages = torch.tensor([2, 0, 2, 1])

    def record(k, index):
        calls.append((k, index.tolist()))
        return torch.zeros(len(index), 1)

    apply_by_stage(stages, 3, record)
    assert calls == [(0, [1]), (1, [3]), (2, [0, 2])]
    assert group_by_stage(torch.tensor([1, 1]), 3)[0][0] == 1


def test_bad_routing_input():
    with pytest.raises(ValueError, match="empty batch"):
        apply_by_stage(torch.zeros(0, dtype=torch.long), 3, lambda k, i: i)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        apply_by_stage(torch.tensor([0, 2]), 2, lambda k, i: i)
    with pytest.raises(ValueError, match="shaped"):
        broadcast_timesteps(torch.zeros(3), 4)
    assert broadcast_timesteps(5, 3).tolist() == [5, 5, 5]
