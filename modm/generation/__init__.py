from modm.generation.generator import DiffusionGenerator, GenerationRequest, InvalidRequestError, size_multiple

__all__ = ["DiffusionGenerator", "GenerationRequest", "InvalidRequestError", "size_multiple"]
