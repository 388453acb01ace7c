from modm.policy.requests import InvalidRequestError
from modm.generation.generator import (
    DiffusionGenerator,
    GenerationRequest,
    size_multiple,
    spec_call_kwargs,
)
from modm.generation.interface import (
    GenerationCounters,
    Generator,
    Operation,
    UnsupportedOperationError,
    run_stoppable,
    unsupported_operation,
)
from modm.generation.local import LocalGenerator
from modm.generation.engines import batching_generator, generator_from_spec
from modm.generation.request_batching import RequestBatchingGenerator
from modm.generation.service import InMemoryModelMetrics, ModelMetricsSink, ModelService
from modm.generation.step_batching import StepBatchingGenerator
from modm.generation.step_costs import StepCosts
from modm.generation.steps import GenerationInterrupted, StepControl

__all__ = [
    "DiffusionGenerator",
    "GenerationCounters",
    "GenerationInterrupted",
    "GenerationRequest",
    "Generator",
    "InMemoryModelMetrics",
    "InvalidRequestError",
    "LocalGenerator",
    "ModelMetricsSink",
    "ModelService",
    "Operation",
    "RequestBatchingGenerator",
    "StepBatchingGenerator",
    "StepControl",
    "StepCosts",
    "UnsupportedOperationError",
    "batching_generator",
    "generator_from_spec",
    "run_stoppable",
    "size_multiple",
    "spec_call_kwargs",
    "unsupported_operation",
]
