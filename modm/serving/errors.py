"""Why a request was not served, as values the HTTP layer maps to a status code without knowing the cause.

Two families: `RequestRefused` (the answer to the client: status, message, error type, optional Retry-After) and the
backend signals the pipeline acts on (`ReplicaLost`: retry once elsewhere; `QueueFull`: the pool's own bounded queue
refused the call). Backends translate their transport's exceptions into the latter, so the pipeline never sees Ray's.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "ModelFailed",
    "NotFound",
    "Overloaded",
    "PermissionDenied",
    "PoolRefused",
    "QueueFull",
    "QueueRejected",
    "ReplicaLost",
    "RequestInvalid",
    "RequestRefused",
    "RequestTimedOut",
    "StoreFailed",
]


class RequestRefused(Exception):
    """A request the system answers with an error: `status` (HTTP), `kind` (the OpenAI-style error type)."""

    status = 500
    kind = "server_error"

    def __init__(self, message: str, *, retry_after_s: int | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}


class RequestInvalid(RequestRefused):
    status, kind = 400, "invalid_request_error"


class AuthenticationFailed(RequestRefused):
    status, kind = 401, "authentication_error"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="modm"'}


class PermissionDenied(RequestRefused):
    status, kind = 403, "permission_error"


class NotFound(RequestRefused):
    status, kind = 404, "not_found"


class Overloaded(RequestRefused):
    """429: admission control expects this request to finish too late. Retry-After says when to come back."""

    status, kind = 429, "overloaded"


class PoolRefused(RequestRefused):
    """503: a model pool's bounded queue is full (Retry-After set), or the model failed."""

    status = 503


class ModelFailed(PoolRefused):
    kind = "server_error"


class QueueRejected(PoolRefused):
    kind = "overloaded"


class StoreFailed(PoolRefused):
    """503: the response store could not keep the images a URL answer links to."""

    kind = "server_error"


class RequestTimedOut(RequestRefused):
    status, kind = 504, "timeout"


class ReplicaLost(Exception):
    """The replica that took a call died or became unreachable before answering (not: it answered with an error).
    Every call the pipeline makes is idempotent, so it retries once."""


class QueueFull(Exception):
    """A model pool's bounded queue refused the call; `retry_after_s` is the transport's suggestion, if any."""

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s
