"""The OpenAI Images API as modm serves it: the request bodies of `POST /v1/images/generations` and
`/v1/images/edits` with every field of the current OpenAI request, the responses, and `GET /v1/models`.

Each field is honoured, mapped, ignored or refused (the README's API table says which):
- honoured: prompt, n, size (auto: the model's default; for edits the image's own size), output_format (png,
  jpeg, webp), output_compression (jpeg/webp quality), response_format (b64_json, url), background opaque/auto,
  model (must be the served system's id), and modm's own seed and steps;
- mapped: quality -> denoising steps per model (ModelSpec.quality_steps);
- ignored (accepted, no effect): style, user, safety_identifier, moderation, complexity, input_fidelity, and
  partial_images (it only shapes streamed answers, which are refused);
- refused with 400: stream=true, output_format gif/svg, svg, frame_count, frame_duration_ms, background
  transparent (the models render opaque images), output_compression with png, and for edits mask and markup.
A field the API does not have is refused with 422 naming it.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modm.config.schema import ImageQuality
from modm.images import ImageFormat
from modm.serving.errors import RequestInvalid
from modm.serving.request import Decision, Delivery, EditRequest, ImageRequest

__all__ = [
    "EditBody",
    "GenerationBody",
    "ImageData",
    "ImagesResponse",
    "ModelCard",
    "ModelList",
]

SIZE_PATTERN = re.compile(r"^(\d{1,5})x(\d{1,5})$")
SERVED_FORMATS = {f.value for f in ImageFormat}


class _ImageOptions(BaseModel):
    """The fields generations and edits share."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, description="What to draw (edits: what the image should become).")
    model: str | None = Field(default=None, description="The served system's id (GET /v1/models), or absent.")
    n: int = Field(default=1, ge=1, description="Images to make (each with seed, seed+1, ...).")
    size: str | None = Field(
        default=None,
        description="'WIDTHxHEIGHT', e.g. '1024x1024', or 'auto': the model's default size (edits: the image's).",
    )
    quality: ImageQuality | None = Field(
        default=None, description="Mapped to denoising steps per model (models.<role>.quality_steps)."
    )
    response_format: Literal["b64_json", "url"] | None = Field(
        default=None, description="b64_json (default): the image inline; url: a signed link valid for a while."
    )
    output_format: Literal["png", "jpeg", "webp", "gif", "svg"] | None = Field(
        default=None, description="png (default), jpeg or webp; gif and svg are refused."
    )
    output_compression: int | None = Field(
        default=None, ge=0, le=100, description="jpeg/webp encoder quality, 0-100 (default 100); lower: smaller."
    )
    background: Literal["transparent", "opaque", "auto"] | None = Field(
        default=None, description="opaque or auto; transparent is refused (the models render opaque images)."
    )
    stream: bool | None = Field(default=None, description="true is refused: answers are not streamed.")
    partial_images: int | None = Field(
        default=None, ge=0, le=3, description="Ignored: it shapes streamed answers only, and those are refused."
    )
    user: str | None = Field(default=None, max_length=256, description="Ignored.")
    safety_identifier: str | None = Field(default=None, max_length=256, description="Ignored.")
    complexity: Literal["low", "medium", "high"] | None = Field(default=None, description="Ignored.")
    frame_count: int | None = Field(default=None, description="Refused: GIF output is not served.")
    frame_duration_ms: int | None = Field(default=None, description="Refused: GIF output is not served.")
    svg: dict[str, Any] | None = Field(default=None, description="Refused: SVG output is not served.")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, description="modm: noise seed; default the system's.")
    steps: int | None = Field(default=None, ge=1, description="modm: denoising steps T; default: the model's.")

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("prompt must not be blank")
        return v

    @field_validator("size")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        if v is not None and v != "auto" and not SIZE_PATTERN.match(v):
            raise ValueError(f"size must look like '512x512' or be 'auto', got {v!r}")
        return v

    def dimensions(self) -> tuple[int | None, int | None]:
        """(width, height); (None, None) for no size or 'auto'."""
        if self.size is None or self.size == "auto":
            return None, None
        width, height = SIZE_PATTERN.match(self.size).groups()
        return int(width), int(height)

    def _refusals(self) -> list[str]:
        problems = []
        if self.stream:
            problems.append("stream=true: answers are not streamed; leave stream out or false")
        if self.output_format is not None and self.output_format not in SERVED_FORMATS:
            problems.append(f"output_format={self.output_format!r} is not served; choose png, jpeg or webp")
        for name in ("svg", "frame_count", "frame_duration_ms"):
            if getattr(self, name) is not None:
                problems.append(f"{name}: {'SVG' if name == 'svg' else 'GIF'} output is not served")
        if self.background == "transparent":
            problems.append("background='transparent': the models render opaque images; use opaque or auto")
        if self.output_compression is not None and self.output_format in (None, "png"):
            problems.append("output_compression applies to jpeg and webp only; png is lossless")
        return problems

    def check_supported(self) -> None:
        """RequestInvalid (400) naming every field whose value this system does not serve."""
        problems = self._refusals()
        if problems:
            raise RequestInvalid("; ".join(problems))

    def delivery(self) -> Delivery:
        return Delivery(
            image_format=ImageFormat(self.output_format or "png"),
            compression=self.output_compression,
            as_url=self.response_format == "url",
        )

    def _request_fields(self, tenant: str) -> dict:
        width, height = self.dimensions()
        return {
            "prompt": self.prompt,
            "n": self.n,
            "width": width,
            "height": height,
            "steps": self.steps,
            "seed": self.seed,
            "tenant": tenant,
            "quality": self.quality,
            "model": self.model,
        }


class GenerationBody(_ImageOptions):
    """POST /v1/images/generations (JSON)."""

    style: Literal["vivid", "natural"] | None = Field(default=None, description="Ignored.")
    moderation: Literal["low", "auto"] | None = Field(default=None, description="Ignored (no moderation model).")

    def image_request(self, tenant: str) -> ImageRequest:
        self.check_supported()
        return ImageRequest(**self._request_fields(tenant))


class EditBody(_ImageOptions):
    """POST /v1/images/edits (multipart): these fields, plus the files `image` (or one `image[]`), and `mask` or
    `markup`, which are refused."""

    strength: float = Field(
        default=0.6,
        gt=0.0,
        le=1.0,
        description="modm: how far the image is re-noised before refinement, (0, 1]: the last strength x steps "
        "denoising steps run; low keeps the image, 1 redraws it.",
    )
    input_fidelity: Literal["high", "low"] | None = Field(default=None, description="Ignored; see strength.")

    def edit_request(self, tenant: str, files: dict[str, list[bytes]]) -> EditRequest:
        """The edit of the one uploaded image in `files` (form field name -> contents); RequestInvalid (400) for a
        mask, markup, no image, several, or an unknown file field."""
        self.check_supported()
        files = dict(files)
        refused = sorted(set(files) & {"mask", "markup"})
        if refused:
            raise RequestInvalid(f"{', '.join(refused)}: masks are not served; send the image alone")
        images = files.pop("image", []) + files.pop("image[]", [])
        if files:
            raise RequestInvalid(f"unknown file field(s) {sorted(files)}; send the image as 'image'")
        if len(images) != 1:
            raise RequestInvalid(f"send exactly one image (field 'image'), got {len(images)}")
        return EditRequest(**self._request_fields(tenant), image=images[0], strength=self.strength)


class ImageData(BaseModel):
    b64_json: str | None = Field(default=None, description="The image, base64 (response_format b64_json).")
    url: str | None = Field(default=None, description="A signed link to the image (response_format url).")


class ImagesResponse(BaseModel):
    created: int = Field(description="Seconds since the epoch.")
    data: list[ImageData]
    background: Literal["opaque"] = "opaque"
    output_format: ImageFormat
    quality: ImageQuality | None = Field(default=None, description="The quality asked for, if any.")
    size: str = Field(description="'WIDTHxHEIGHT' of the images.")
    modm: Decision


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="When this Router replica started serving (seconds since the epoch).")
    owned_by: str = "modm"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
