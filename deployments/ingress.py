"""The HTTP plumbing of the Ingress (deployments/http_ingress.py): the FastAPI app it serves, one JSON error shape
for every refusal (the pipeline's, FastAPI's validation errors, Starlette's 404/405), and reading a JSON or multipart
body under a size limit."""

from __future__ import annotations

from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from deployments.api import error_body
from modm.serving.errors import RequestRefused

__all__ = ["api", "body_schema", "multipart_schema", "read_body", "read_form", "read_json_body", "validate_form"]

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


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body: 413 for one over `limit` bytes before it is read in full (by Content-Length, or while a
    chunked body streams in)."""
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
    return bytes(body)


async def read_json_body(request: Request, model: type[M], limit: int) -> M:
    """The request's JSON body as `model`: 413 over `limit` bytes (read_body), 422 for one that does not validate."""
    body = await read_body(request, limit)
    try:
        return model.model_validate_json(body)
    except ValidationError as err:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in err.errors()]) from None


async def read_form(request: Request, limit: int) -> tuple[dict[str, str], dict[str, list[bytes]]]:
    """A multipart/form-data body under `limit` bytes: (text fields, the files' contents by field name). 400 for
    another content type, a malformed body or a repeated text field; 413 over the limit."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise HTTPException(400, f"send multipart/form-data (as the OpenAI client does), not {content_type[:80]!r}")
    body = await read_body(request, limit)

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form(max_files=8, max_fields=64, max_part_size=limit)
    fields: dict[str, str] = {}
    files: dict[str, list[bytes]] = {}
    for name, value in form.multi_items():
        if isinstance(value, str):
            if name in fields:
                raise HTTPException(400, f"form field {name[:80]!r} is given more than once")
            fields[name] = value
        else:
            files.setdefault(name, []).append(await value.read())
    await form.close()
    return fields, files


def validate_form(model: type[M], fields: dict[str, str]) -> M:
    """Text form fields as `model` (422 naming the field otherwise, like a JSON body)."""
    try:
        return model.model_validate(fields)
    except ValidationError as err:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in err.errors()]) from None


def body_schema(model: type[BaseModel]) -> dict:
    """OpenAPI `requestBody` of an endpoint that reads its body with `read_json_body`."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def multipart_schema(model: type[BaseModel], files: dict[str, str], required: tuple[str, ...]) -> dict:
    """OpenAPI `requestBody` of an endpoint that reads a multipart form with `read_form`: `model`'s fields plus
    the binary `files` (name -> description), of which `required` must be sent."""
    schema = model.model_json_schema()
    for name, description in files.items():
        schema["properties"][name] = {"type": "string", "format": "binary", "description": description}
    schema["required"] = [*schema.get("required", []), *required]
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}
