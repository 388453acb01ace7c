"""The generator a model replica runs, from its spec's `batching`: one request at a time, request-level batches, or
step-level (continuous) batches where the pipeline's family supports them."""

from __future__ import annotations

import logging

from modm.config.schema import BatchEngine, ModelSpec
from modm.generation.generator import DiffusionGenerator
from modm.generation.interface import Generator
from modm.generation.local import LocalGenerator
from modm.generation.request_batching import RequestBatchingGenerator

__all__ = ["batching_generator", "generator_from_spec"]

logger = logging.getLogger(__name__)


def batching_generator(diffusion: DiffusionGenerator, spec: ModelSpec) -> Generator:
    """`diffusion` behind the engine `spec.batching` names (max_batch_size 1: no batching at all)."""
    batching = spec.batching
    if not batching.batches:
        return LocalGenerator(diffusion)
    if batching.engine is BatchEngine.STEP:
        from modm.generation.step_batching import StepBatchingGenerator

        problem = StepBatchingGenerator.unsupported(diffusion.pipe)
        if problem is None:
            return StepBatchingGenerator(
                diffusion, max_batch_size=batching.max_batch_size, max_wait_s=batching.max_wait_s
            )
        logger.warning(
            "%s model: step-level batching unavailable (%s); batching whole requests", diffusion.name, problem
        )
    return RequestBatchingGenerator(diffusion, max_batch_size=batching.max_batch_size, max_wait_s=batching.max_wait_s)


def generator_from_spec(spec: ModelSpec, name: str, *, device=None) -> Generator:
    """Load the spec's pipeline in this process, behind its batching engine."""
    return batching_generator(DiffusionGenerator.from_spec(spec, name, device=device), spec)
