"""Request limits: pure checks shared by the request pipeline and the generators."""

from __future__ import annotations

from modm.config.schema import RequestLimits


class InvalidRequestError(ValueError):
    """A request that cannot be served; the message names the field and value."""


def check_request_limits(prompt: object, steps: int | None, tenant: object, limits: RequestLimits) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequestError("prompt must be a non-empty string")
    if len(prompt) > limits.max_prompt_chars:
        raise InvalidRequestError(f"prompt has {len(prompt)} characters; the limit is {limits.max_prompt_chars}")
    if steps is not None and not 0 < steps <= limits.max_steps:
        raise InvalidRequestError(f"steps={steps} must be in [1, {limits.max_steps}]")
    if not isinstance(tenant, str) or not tenant.strip():
        raise InvalidRequestError("tenant must be a non-empty string")


def check_dimensions(width: int, height: int, *, size_multiple: int, max_size: int, model: str) -> None:
    """Image sides must be positive multiples of the model's latent patch in pixels, and not above its maximum."""
    for side, value in (("width", width), ("height", height)):
        if value <= 0 or value % size_multiple:
            raise InvalidRequestError(
                f"{side}={value} must be a positive multiple of {size_multiple} for model {model!r}"
            )
        if value > max_size:
            raise InvalidRequestError(f"{side}={value} exceeds the largest size {max_size} of model {model!r}")
