"""The HTTP API's request and response bodies (OpenAI Images shape plus modm's decision record)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modm.serving.request import Decision

SIZE_PATTERN = re.compile(r"^(\d{1,5})x(\d{1,5})$")


class GenerationBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, description="What to draw.")
    n: int = Field(default=1, ge=1, description="Images to generate (each with seed, seed+1, ...).")
    size: str | None = Field(default=None, description="'WIDTHxHEIGHT', e.g. '1024x1024'; default: the model's.")
    response_format: Literal["b64_json"] = Field(default="b64_json", description="Only base64 PNG is served.")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, description="Noise seed; default: the system seed.")
    steps: int | None = Field(default=None, ge=1, description="Denoising steps T; default: the model's.")
    model: str | None = Field(default=None, description="Accepted for OpenAI compatibility; ignored.")
    user: str | None = Field(default=None, max_length=256, description="Accepted for OpenAI compatibility.")

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("prompt must not be blank")
        return v

    @field_validator("size")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        if v is not None and not SIZE_PATTERN.match(v):
            raise ValueError(f"size must look like '512x512', got {v!r}")
        return v

    def dimensions(self) -> tuple[int, int] | None:
        if self.size is None:
            return None
        width, height = SIZE_PATTERN.match(self.size).groups()
        return int(width), int(height)


class ImageData(BaseModel):
    b64_json: str


class GenerationResponse(BaseModel):
    created: int
    data: list[ImageData]
    modm: Decision


def error_body(message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind}}
