"""The HTTP side of the API's contract: the error body every refusal has, and how the OpenAPI schema documents each
status an endpoint can answer (with Retry-After and WWW-Authenticate where they come). The request and response
bodies are Ray-free, in modm.serving.images_api."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    message: str = Field(description="What was wrong, naming the field or the limit.")
    type: str = Field(
        description="invalid_request_error, authentication_error, permission_error, not_found, overloaded, "
        "timeout or server_error."
    )


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_body(message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind}}


RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}
WWW_AUTHENTICATE = {
    "WWW-Authenticate": {
        "description": 'The scheme to authenticate with: Bearer realm="modm".',
        "schema": {"type": "string"},
    }
}
ERRORS = {
    400: ("The request is well-formed but cannot be served (a limit, a size, an unsupported value, a bad image).", {}),
    401: ("Missing or invalid API key (only when API keys are configured).", WWW_AUTHENTICATE),
    403: ("X-Tenant-Id names another tenant than the API key's.", {}),
    404: ("No such resource, or not this tenant's, or its link expired.", {}),
    413: ("The request body exceeds limits.max_body_bytes (edits: limits.max_upload_bytes).", {}),
    422: ("The body does not validate: a field of the wrong type, out of range, or unknown.", {}),
    429: ("Admission control: the request would finish later than the latency bound.", RETRY_AFTER),
    503: ("A model pool's queue is full (with Retry-After), or a model or the response store failed.", RETRY_AFTER),
    504: ("No answer within serving.request_timeout_s.", {}),
}
# The statuses an image request (generation or edit) can get.
IMAGE_REQUEST_ERRORS = (400, 401, 403, 413, 422, 429, 503, 504)


def error_responses(*statuses: int) -> dict:
    """FastAPI `responses=` documenting `statuses` with the error body and their headers."""
    out = {}
    for status in statuses:
        description, headers = ERRORS[status]
        out[status] = {"model": ErrorBody, "description": description}
        if headers:
            out[status]["headers"] = headers
    return out
