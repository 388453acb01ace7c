"""A request as the pipeline sees it, before and after validation, and what it answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict

from modm.config.schema import ImageQuality
from modm.constants import DEFAULT_TENANT
from modm.images import ImageFormat
from modm.policy.tenancy import CacheScope
from modm.roles import ModelRole

__all__ = [
    "Decision",
    "DeliveredImage",
    "Delivery",
    "EditRequest",
    "ImageRequest",
    "Job",
    "ServedImages",
    "SignedLink",
]


@dataclass(frozen=True)
class ImageRequest:
    """What a client asked for; None: the large model's default (size, steps) or the system seed. `quality` picks
    the steps by the model's `quality_steps` (`steps` and a quality other than auto exclude each other); `model`,
    when given, must be the served system's id."""

    prompt: str
    n: int = 1
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    seed: int | None = None
    tenant: str = DEFAULT_TENANT
    quality: ImageQuality | None = None
    model: str | None = None


@dataclass(frozen=True)
class EditRequest(ImageRequest):
    """An image edit: `image` (the upload's bytes, checked by the pipeline) refined at `strength` toward the
    prompt; None sizes: the image's own, rounded down to the model's size multiple."""

    image: bytes = b""
    strength: float = 0.6


@dataclass(frozen=True)
class Delivery:
    """How images are answered: in `image_format` (with the JPEG/WebP `compression` quality, 0-100), inline in
    the response (base64) or as signed links to the response store."""

    image_format: ImageFormat = ImageFormat.PNG
    compression: int | None = None
    as_url: bool = False


@dataclass(frozen=True)
class SignedLink:
    """A stored image's link: GET /v1/images/{image_id}?expires=...&signature=... opens it until `expires`
    (seconds since the epoch), without an API key."""

    image_id: str
    expires: int
    signature: str


@dataclass(frozen=True)
class DeliveredImage:
    """One answered image: its bytes (inline answers) or its link (URL answers)."""

    media_type: str
    data: bytes | None = None
    link: SignedLink | None = None


@dataclass
class Job:
    """A validated request with everything resolved: the unit the mode strategies work on."""

    request_id: str
    prompt: str
    n: int
    width: int
    height: int
    steps: int
    seed: int  # image i uses seed + i
    tenant: str
    scope: CacheScope
    timings_s: dict[str, float] = field(default_factory=dict)
    # The small-model tier the request was routed to (None on the large model): its calls go to that tier's pool.
    tier: str | None = None


class Decision(BaseModel):
    """What the system decided for a request: the response's `modm` record (also its HTTP schema)."""

    model_config = ConfigDict(frozen=True)

    request_id: str
    mode: str
    hit: bool
    score: float | None
    k: int
    strength: float
    model: ModelRole
    timings_s: dict[str, float]
    # The small model that served it: its tier (small, small2, ... in models.small_tiers order); None on the large.
    tier: str | None = None
    # "edit": an uploaded image refined at `strength` (k = the steps that refinement skips); never cached.
    operation: Literal["generation", "edit"] = "generation"
    # MoDM: the cache entry a hit was refined from (GET /v1/cache/{entry_id} serves its image); None otherwise.
    entry_id: int | None = None
    # A feature-cached model's hooked-module calls for this request's images: {kind, unit, skipped, total}
    # (summed over its n images); None when the model runs no feature cache.
    feature_cache: dict | None = None


@dataclass(frozen=True)
class ServedImages:
    images: list[bytes]  # PNG, one per requested image
    decision: Decision
    created: int  # seconds since the epoch
    width: int
    height: int
