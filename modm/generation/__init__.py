from modm.policy.requests import InvalidRequestError
from modm.generation.generator import (
    DiffusionGenerator,
    GenerationRequest,
    size_multiple,
    spec_call_kwargs,
)

__all__ = ["DiffusionGenerator", "GenerationRequest", "InvalidRequestError", "size_multiple", "spec_call_kwargs"]
