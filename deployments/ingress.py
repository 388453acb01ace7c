"""The ingress's HTTP plumbing: the FastAPI app the Router serves, one JSON error shape for every refusal (the
pipeline's, FastAPI's validation errors, Starlette's 404/405), and reading a JSON body under a size limit."""

from __future__ import annotations

from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from deployments.api import error_body
from modm.serving.errors import RequestRefused

__all__ = ["api", "body_schema", "read_json_body"]

M = TypeVar("M", bound=BaseModel)

api = FastAPI(
    title="modm",
    version="0.1.0",
    description="Text-to-image serving with a mixture of diffusion models and a cache of final images.",
)


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


@api.exception_handler(RequestRefused)
async def _refused(request: Request, err: RequestRefused) -> JSONResponse:
    return JSONResponse(status_code=err.status, content=error_body(err.message, err.kind), headers=err.headers())


async def read_json_body(request: Request, model: type[M], limit: int) -> M:
    """The request's JSON body as `model`: 413 for a body over `limit` bytes before it is read in full (by
    Content-Length, or while a chunked body streams in), 422 for one that does not validate."""
    declared = request.headers.get("content-length")
    if declared is not None and not declared.isdigit():
        raise HTTPException(400, "Content-Length must be a non-negative integer")
    too_large = HTTPException(413, f"the request body exceeds the limit of {limit} bytes")
    if declared is not None and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    try:
        return model.model_validate_json(bytes(body))
    except ValidationError as err:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in err.errors()]) from None


def body_schema(model: type[BaseModel]) -> dict:
    """OpenAPI `requestBody` of an endpoint that reads its body with `read_json_body`."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}
