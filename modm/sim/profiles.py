"""Per-GPU latency profiles: seconds per full generation of each model, its model-load (switch) cost.

A request's GPU time is `fixed + (1 - k/T) (full - fixed)`: a miss (k = 0) costs a full generation, a hit refined
from step k costs the remaining fraction of the steps (MoDM Eq. 8). `fixed` is the part of a generation that does
not scale with the step count (text encoding, VAE encode/decode); MoDM's model sets it to 0, a measured profile of
small models on a CPU should not.

Built-in profiles come from the MoDM paper and code; anything else is a JSON file of this schema, e.g. written by
a profiling run on a real GPU:

    {"gpu": "A100-80GB", "full_generation_s": {"large": 38.0, "small": 7.1},
     "fixed_s": {"large": 0.6, "small": 0.3}, "load_s": {"large": 35, "small": 12}, "router_s": 0.02}
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from modm.policy import Throughput
from modm.roles import ModelRole
from modm.sim.constants import (
    A40_LARGE_S,
    A40_SMALL_S,
    DEFAULT_LARGE_LOAD_S,
    DEFAULT_SMALL_LOAD_S,
    MI210_LARGE_S,
    MI210_SMALL_S,
    SANA_TO_SDXL_LATENCY,
)

__all__ = ["BUILTIN_PROFILES", "LatencyProfile", "TierLatency", "resolve_profile"]


def _default_load_s() -> dict[ModelRole, float]:
    return {ModelRole.LARGE: DEFAULT_LARGE_LOAD_S, ModelRole.SMALL: DEFAULT_SMALL_LOAD_S}


class TierLatency(BaseModel):
    """A cheaper small model (an overload tier, modm.policy.tiers) on the same GPU."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    full_generation_s: float = Field(gt=0, description="Seconds for one full T-step generation on one GPU.")
    fixed_s: float = Field(default=0.0, ge=0, description="Seconds that do not scale with steps.")
    load_s: float = Field(default=DEFAULT_SMALL_LOAD_S, ge=0, description="Seconds to switch a GPU to this model.")
    source: str = Field(default="", description="Where the latency comes from.")

    @model_validator(mode="after")
    def _fixed_within(self) -> "TierLatency":
        if self.fixed_s > self.full_generation_s:
            raise ValueError(f"fixed_s={self.fixed_s} exceeds full_generation_s={self.full_generation_s}")
        return self


class LatencyProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu: str = Field(description="GPU type the numbers were measured on (a label).")
    full_generation_s: dict[ModelRole, float] = Field(
        description="Seconds for one full T-step generation per model on one GPU; 'large' is required."
    )
    fixed_s: dict[ModelRole, float] = Field(
        default_factory=dict,
        description="Seconds of each generation that do not scale with steps (text encoder, VAE); 0 if absent.",
    )
    load_s: dict[ModelRole, float] = Field(
        default_factory=_default_load_s,
        description="Seconds to switch a GPU to this model (unload, load). Absent models default to 0.",
    )
    router_s: float = Field(
        default=0.0, ge=0.0, description="Seconds per request before dispatch (embedding, retrieval), off-GPU."
    )
    source: str = Field(default="", description="Where the numbers come from.")
    small_tiers: dict[str, TierLatency] = Field(
        default_factory=dict,
        description="Cheaper small models after the small one, best quality first, by tier name (the live "
        "config's 'small2', 'small3', ...): the monitor moves hits to them under load.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> "LatencyProfile":
        if self.small_tiers and not self.has(ModelRole.SMALL):
            raise ValueError(f"profile {self.gpu!r}: small_tiers need a 'small' latency first")
        if ModelRole.SMALL.value in self.small_tiers:
            raise ValueError(f"profile {self.gpu!r}: 'small' is the first tier; name the others otherwise")
        if ModelRole.LARGE not in self.full_generation_s:
            raise ValueError(f"profile {self.gpu!r}: full_generation_s needs a 'large' entry")
        for name, table in (
            ("full_generation_s", self.full_generation_s),
            ("fixed_s", self.fixed_s),
            ("load_s", self.load_s),
        ):
            for role, seconds in table.items():
                if not seconds >= 0 or (name == "full_generation_s" and not seconds > 0):
                    raise ValueError(
                        f"profile {self.gpu!r}: {name}[{role.value}]={seconds} must be "
                        f"{'positive' if name == 'full_generation_s' else 'non-negative'}"
                    )
        for role, fixed in self.fixed_s.items():
            full = self.full_generation_s.get(role)
            if full is None or fixed > full:
                raise ValueError(
                    f"profile {self.gpu!r}: fixed_s[{role.value}]={fixed} exceeds the full generation time {full}"
                )
        return self

    def has(self, role: ModelRole) -> bool:
        return role in self.full_generation_s

    def full_s(self, role: ModelRole) -> float:
        try:
            return self.full_generation_s[role]
        except KeyError:
            raise ValueError(f"profile {self.gpu!r} has no latency for the {role.value} model") from None

    def service_s(self, role: ModelRole, k: int, total_steps: int) -> float:
        """GPU seconds for a request that skips k of total_steps steps on `role`'s model."""
        full = self.full_s(role)
        fixed = self.fixed_s.get(role, 0.0)
        return fixed + (1.0 - k / total_steps) * (full - fixed)

    def switch_s(self, role: ModelRole) -> float:
        return self.load_s.get(role, 0.0)

    def tier_names(self) -> list[str]:
        """The small models best quality first: 'small' (full_generation_s[small]), then small_tiers."""
        return [ModelRole.SMALL.value, *self.small_tiers] if self.has(ModelRole.SMALL) else []

    def tier_service_s(self, tier: str, k: int, total_steps: int) -> float:
        """GPU seconds for a hit that skips k of total_steps steps on small tier `tier`."""
        if tier == ModelRole.SMALL.value:
            return self.service_s(ModelRole.SMALL, k, total_steps)
        latency = self._tier(tier)
        return latency.fixed_s + (1.0 - k / total_steps) * (latency.full_generation_s - latency.fixed_s)

    def tier_switch_s(self, tier: str) -> float:
        return self.switch_s(ModelRole.SMALL) if tier == ModelRole.SMALL.value else self._tier(tier).load_s

    def tier_per_min(self) -> dict[str, float]:
        """Full generations per minute per GPU of each small tier (the tier policy's P_t)."""
        full = {ModelRole.SMALL.value: self.full_s(ModelRole.SMALL)} if self.has(ModelRole.SMALL) else {}
        full.update({name: t.full_generation_s for name, t in self.small_tiers.items()})
        return {name: 60.0 / seconds for name, seconds in full.items()}

    def _tier(self, tier: str) -> TierLatency:
        try:
            return self.small_tiers[tier]
        except KeyError:
            raise ValueError(f"profile {self.gpu!r} has no small tier {tier!r}") from None

    def throughput(self) -> Throughput:
        """Full generations per minute per GPU, the monitor's P_large and P_small."""
        return Throughput.from_latencies(self.full_s(ModelRole.LARGE), self.full_s(ModelRole.SMALL))


BUILTIN_PROFILES: dict[str, LatencyProfile] = {
    "mi210": LatencyProfile(
        gpu="MI210",
        full_generation_s={ModelRole.LARGE: MI210_LARGE_S, ModelRole.SMALL: MI210_SMALL_S},
        source="MoDM multinode code: SD3.5-Large 91.5 s, SDXL 16.5 s (50 steps, 1024x1024); load times assumed",
    ),
    # MI210 with SANA-1.6B as the second tier (MoDM's Fig. 10 pair). SANA's time is SDXL's MI210 time scaled by
    # SANA's published ratio at 1024x1024, batch 1, A100: 1.2 s vs SDXL 6.5 s (SANA paper Table 7, the README
    # "Performance" table of NVlabs/Sana); not fitted to MoDM's figure.
    "mi210-sana": LatencyProfile(
        gpu="MI210",
        full_generation_s={ModelRole.LARGE: MI210_LARGE_S, ModelRole.SMALL: MI210_SMALL_S},
        small_tiers={
            "small2": TierLatency(
                full_generation_s=MI210_SMALL_S * SANA_TO_SDXL_LATENCY,
                source="SANA-1.6B: SDXL's MI210 16.5 s x 1.2/6.5 (SANA Table 7, A100 1024px batch-1 latencies)",
            )
        },
        source="MoDM multinode code: SD3.5-Large 91.5 s, SDXL 16.5 s; SANA-1.6B by SANA's latency ratio to SDXL; "
        "load times assumed",
    ),
    "a40": LatencyProfile(
        gpu="A40",
        full_generation_s={ModelRole.LARGE: A40_LARGE_S, ModelRole.SMALL: A40_SMALL_S},
        source="SD3.5-Large 60 s implied by MoDM's 120 s 2x SLO; SDXL derived by the MI210 ratio 91.5/16.5; "
        "load times assumed",
    ),
}


def resolve_profile(name_or_path: str | Path) -> LatencyProfile:
    """A built-in profile by name (case-insensitive) or a JSON file of the LatencyProfile schema."""
    key = str(name_or_path).lower()
    if key in BUILTIN_PROFILES:
        return BUILTIN_PROFILES[key]
    path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(
            f"unknown latency profile {str(name_or_path)!r}: not one of {sorted(BUILTIN_PROFILES)} and not a file"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON latency profile ({err})") from None
    try:
        return LatencyProfile.model_validate(data)
    except ValidationError as err:
        raise ValueError(f"{path}: not a latency profile: {err}") from None
