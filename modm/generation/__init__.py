from modm.generation.generator import (
    DiffusionGenerator,
    GenerationRequest,
    InvalidRequestError,
    size_multiple,
    spec_call_kwargs,
)

__all__ = ["DiffusionGenerator", "GenerationRequest", "InvalidRequestError", "size_multiple", "spec_call_kwargs"]
