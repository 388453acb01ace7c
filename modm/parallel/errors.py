"""Errors raised by parallel inference. All bad-input errors are `ValueError` subclasses so callers can catch them
the ordinary way; rendezvous failures are `RuntimeError`s because they are about the environment, not the input."""

from __future__ import annotations

__all__ = [
    "ParallelConfigError",
    "PatchSplitError",
    "SequenceSplitError",
    "UnsupportedModelError",
    "RendezvousError",
]


from modm.config.parallel import ParallelConfigError  # noqa: E402 -- defined with the config it validates


class PatchSplitError(ValueError):
    """The latent cannot be cut into equal row stripes at every resolution level of the model."""


class SequenceSplitError(ValueError):
    """A token sequence that context parallelism cannot cut into one equal shard per rank."""


class UnsupportedModelError(ValueError):
    """The model (or one of its layers) has a class or option the parallel wrappers do not handle."""


class RendezvousError(RuntimeError):
    """The process group could not be formed within the timeout (a rank is missing or unreachable)."""
