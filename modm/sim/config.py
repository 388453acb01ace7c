"""The simulator's configuration: one pydantic schema reusing the live system's policy and monitor configs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from modm.config.schema import Admission, MonitorConfig, PolicyConfig, SystemMode
from modm.constants import DEFAULT_CACHE_CAPACITY
from modm.policy.tables import MINILM_TEXT_TABLE
from modm.roles import ModelRole
from modm.sim.index_tier import IndexTierConfig
from modm.sim.profiles import BUILTIN_PROFILES, LatencyProfile

__all__ = ["DEFAULT_PARAMETRIC_K_MIX", "ParametricHitConfig", "SimConfig"]

# A k mix with F_refine = sum P(k)(1 - k/50) = 0.725, inside the 0.7-0.8 "average hit cost" MoDM's harness assumes.
DEFAULT_PARAMETRIC_K_MIX: dict[int, float] = {5: 0.30, 10: 0.25, 15: 0.20, 25: 0.15, 30: 0.10}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParametricHitConfig(_Strict):
    """Hits without embeddings: every request hits with probability hit_rate, k drawn from k_mix."""

    hit_rate: float = Field(
        default=0.7, ge=0.0, le=1.0, description="Probability that a request hits (MoDM's harness assumes 0.7)."
    )
    k_mix: dict[int, float] = Field(
        default_factory=lambda: dict(DEFAULT_PARAMETRIC_K_MIX),
        description="Relative weight of each k (steps skipped) among hits.",
    )


class SimConfig(_Strict):
    system: SystemMode = Field(default=SystemMode.MODM, description="modm, vanilla or nirvana.")
    n_gpus: int = Field(default=4, ge=1, description="GPU workers, one model each.")
    profile: LatencyProfile = Field(default=BUILTIN_PROFILES["a40"], description="Per-model latencies of a GPU.")
    monitor: MonitorConfig = Field(
        default_factory=MonitorConfig,
        description="Algorithm 1 settings (mode, window, PID, min_small); its gpu_budget is ignored: the "
        "simulated monitor splits n_gpus.",
    )
    policy: PolicyConfig = Field(
        default_factory=lambda: PolicyConfig(k_table=MINILM_TEXT_TABLE),
        description="MoDM's score -> k table; the default is the MiniLM text->text table, matching the "
        "simulator's default embeddings.",
    )
    cache_capacity: int = Field(default=DEFAULT_CACHE_CAPACITY, gt=0, description="MoDM: images cached (FIFO).")
    admission: Admission = Field(default=Admission.CACHE_ALL, description="MoDM: which outputs enter the cache.")
    nirvana_capacity_prompts: int = Field(
        default=10_000, gt=0, description="NIRVANA: prompts whose five latents fit in the cache."
    )
    parametric: ParametricHitConfig | None = Field(
        default=None, description="Use the parametric hit model instead of retrieval over embeddings."
    )
    monitor_initial_large: int | None = Field(
        default=None, ge=1, description="Large replicas before the first window; None = n_gpus - min_small."
    )
    seed: int = Field(default=42, ge=0, description="Seed of the parametric hit model.")
    index_tier: IndexTierConfig | None = Field(
        default=None,
        description="The cache index tier's replicas and service times; None: retrieval and admission cost nothing "
        "beyond profile.router_s.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> "SimConfig":
        if self.system is SystemMode.MODM:
            if self.n_gpus <= self.monitor.min_small:
                raise ValueError(
                    f"modm needs more GPUs than monitor.min_small={self.monitor.min_small}; got n_gpus={self.n_gpus}"
                )
            if not self.profile.has(ModelRole.SMALL):
                raise ValueError(f"modm needs a small-model latency; profile {self.profile.gpu!r} has none")
            if self.monitor_initial_large is not None and self.monitor_initial_large > self.n_gpus:
                raise ValueError(f"monitor_initial_large={self.monitor_initial_large} exceeds n_gpus={self.n_gpus}")
        return self

    def monitor_config(self) -> MonitorConfig:
        """The monitor's config with gpu_budget = n_gpus (validated again)."""
        return MonitorConfig.model_validate({**self.monitor.model_dump(), "gpu_budget": self.n_gpus})

    @property
    def reference_latency_s(self) -> float:
        """The standalone large-model latency that SLOs are multiples of."""
        return self.profile.full_s(ModelRole.LARGE)
