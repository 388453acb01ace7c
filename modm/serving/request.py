"""A request as the pipeline sees it, before and after validation, and what it answers."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict

from modm.constants import DEFAULT_TENANT
from modm.policy.tenancy import CacheScope
from modm.roles import ModelRole

__all__ = ["Decision", "ImageRequest", "Job", "ServedImages"]


@dataclass(frozen=True)
class ImageRequest:
    """What a client asked for; None: the large model's default (size, steps) or the system seed."""

    prompt: str
    n: int = 1
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    seed: int | None = None
    tenant: str = DEFAULT_TENANT


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
    # MoDM: the cache entry a hit was refined from (GET /v1/cache/{entry_id} serves its image); None otherwise.
    entry_id: int | None = None


@dataclass(frozen=True)
class ServedImages:
    images: list[bytes]  # PNG, one per requested image
    decision: Decision
    created: int  # seconds since the epoch
