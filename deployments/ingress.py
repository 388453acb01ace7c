"""The ingress's HTTP plumbing: the FastAPI app the Router serves, one JSON error shape for every refusal (ours,
FastAPI's validation errors, Starlette's 404/405/413), and the request-body size limit."""

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from deployments.api import error_body
from modm.config.schema import RequestLimits

__all__ = ["BodySizeLimit", "RequestRejected", "api"]

api = FastAPI(
    title="modm",
    version="0.1.0",
    description="Text-to-image serving with a mixture of diffusion models and a cache of final images.",
)


class RequestRejected(Exception):
    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", headers: dict[str, str] | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers


@api.exception_handler(RequestValidationError)
async def _invalid_body(request: Request, err: RequestValidationError) -> JSONResponse:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in err.errors()
    )
    return JSONResponse(status_code=422, content=error_body(problems, "invalid_request_error"))


@api.exception_handler(HTTPException)
async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    # Starlette's own refusals (404, 405, 413, unreadable bodies) in the same error shape as ours.
    return JSONResponse(
        status_code=err.status_code, content=error_body(str(err.detail), "invalid_request_error"), headers=err.headers
    )


class BodySizeLimit:
    """ASGI middleware: 413 for a request body over the limit, before it is read in full (by Content-Length, or
    while a chunked body streams in). The limit is per replica: `api.state.max_body_bytes`, set by the Router."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = api.state.max_body_bytes
        too_large = HTTPException(413, f"the request body exceeds the limit of {limit} bytes")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            response = await _http_error(
                None,
                too_large
                if declared.isdigit()
                else HTTPException(400, "Content-Length must be a non-negative integer"),
            )
            return await response(scope, receive, send)
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise too_large  # FastAPI passes HTTPExceptions from body reading through to _http_error
            return message

        await self.app(scope, counting_receive, send)


api.state.max_body_bytes = RequestLimits().max_body_bytes  # until a Router sets its config's limit
api.add_middleware(BodySizeLimit)


@api.exception_handler(RequestRejected)
async def _rejected(request: Request, err: RequestRejected) -> JSONResponse:
    return JSONResponse(status_code=err.status, content=error_body(err.message, err.kind), headers=err.headers)
