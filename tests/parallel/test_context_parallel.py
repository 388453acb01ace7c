"""Ulysses through diffusers' context parallelism on 2 gloo ranks: a FLUX twin (modm.models.twins, fp32) gives the
single-device latents within 1e-5; ring, SD3 and sequences that do not split are refused with the reason."""

from __future__ import annotations

import numpy as np
import pytest

import context_parallel_workers as workers
from modm.config.parallel import ParallelConfig, ParallelMethod
from modm.generation.capabilities import parallel_problem
from modm.models.architectures import architecture_for
from modm.models.twins import build_pipeline_twin
from spawn import run_ranks

EXACT_ATOL = 1e-5
SPAWN_TIMEOUT_S = 150

pytestmark = pytest.mark.timeout(2 * SPAWN_TIMEOUT_S)


@pytest.fixture(scope="module")
def flux_twin(tmp_path_factory) -> str:
    return str(build_pipeline_twin(architecture_for("black-forest-labs/FLUX.1-dev"), tmp_path_factory.mktemp("flux")))


@pytest.fixture(scope="module")
def two_ranks(flux_twin):
    return run_ranks(workers.flux_suite, 2, timeout_s=SPAWN_TIMEOUT_S, source=flux_twin)


def test_ulysses_equals_single_device(two_ranks):
    for rank in two_ranks:
        assert float(np.abs(rank["ulysses"] - rank["reference"]).max()) <= EXACT_ATOL
    assert np.array_equal(two_ranks[0]["ulysses"], two_ranks[1]["ulysses"])


def test_remove_gives_the_model_back(two_ranks):
    assert np.array_equal(two_ranks[0]["after_remove"], two_ranks[0]["reference"])


def test_ring_is_refused_on_cpu_with_the_reason(two_ranks):
    for rank in two_ranks:
        assert "return_lse" in rank["ring_refusal"] and "cuda" in rank["ring_refusal"]


def test_a_sequence_that_does_not_split_is_refused_on_every_rank(two_ranks):
    for rank in two_ranks:
        assert "9 tokens" in rank["split_refusal"], rank["split_refusal"]


@pytest.mark.parametrize("method", ["ulysses", "ring"])
def test_sd3_and_unets_have_no_context_parallel_plan(method):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel

    for denoiser in (SD3Transformer2DModel, UNet2DConditionModel):
        problem = parallel_problem(denoiser, ParallelMethod(method))
        assert problem and denoiser.__name__ in problem and "_cp_plan" in problem
    assert parallel_problem(FluxTransformer2DModel, ParallelMethod(method)) is None
    assert "distrifusion supports" in parallel_problem(FluxTransformer2DModel, ParallelMethod.DISTRIFUSION)


def test_context_parallel_config_needs_two_ranks_and_no_cfg_split():
    assert ParallelConfig(method="ulysses", world_size=4).is_context_parallel
    with pytest.raises(ValueError, match="world_size >= 2"):
        ParallelConfig(method="ring", world_size=1)
    with pytest.raises(ValueError, match="cfg_split"):
        ParallelConfig(method="ulysses", world_size=2, cfg_split=True)
