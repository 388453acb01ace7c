"""A simulated run, in the load generator's terms: the same records, stats samples, summary, files and plots.

A run directory written by `SimResult.write` is a modm.workload run directory like a loadgen run's (records.parquet
with the run metadata, stats.parquet, summary.json/.txt, latency_cdf.png, timeline.png), so `modm-loadgen report`
and `compare` read simulated and measured runs alike; sim.json adds the monitor's decisions, the model switches and
the simulator's cost.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modm.workload.constants import SLO_MULTIPLIERS
from modm.workload.records import Outcome, RequestRecord, StatsSample
from modm.workload.report import RunSummary, slo_key, summarize
from modm.workload.runs import write_run_files

if TYPE_CHECKING:
    from modm.sim.config import SimConfig
    from modm.sim.index_tier import IndexTierReport
    from modm.sim.workload import Workload

__all__ = ["FastMetrics", "MonitorDecision", "SimResult", "WorkerSwitch"]


@dataclass(frozen=True)
class MonitorDecision:
    t_s: float
    request_rate: float  # R of the window, req/min
    hit_rate: float  # H of the window
    k_mix: dict[str, int]
    target_large: float  # Algorithm 1's unsmoothed target
    large: int  # the PID-smoothed allocation
    small: int
    feasible: bool
    tier: str | None = None  # the small tier chosen for the next window (modm.policy.tiers)
    tier_shares: dict[str, float] | None = None  # each tier's share of the GPU budget in this window


@dataclass(frozen=True)
class WorkerSwitch:
    t_s: float  # when the worker started loading the model
    worker: int
    to_model: str


@dataclass(frozen=True)
class FastMetrics:
    """The headline numbers computed with numpy (for runs too large to turn into records); the definitions are
    loadgen.report's: warm-up excluded, throughput = ok / (last completion - first arrival)."""

    n_requests: int
    n_ok: int
    makespan_s: float
    throughput_req_per_min: float
    hit_rate: float
    latency_p50_s: float
    latency_p99_s: float
    slo_attainment: dict[str, float]


@dataclass
class SimResult:
    config: SimConfig
    workload: Workload
    arrival_s: np.ndarray
    start_s: np.ndarray  # when a worker took the request
    end_s: np.ndarray
    hit: np.ndarray
    k: np.ndarray
    score: np.ndarray
    served_by: np.ndarray  # 0 large, 1 + i the i-th small tier (1: small), -1 never served
    worker: np.ndarray  # the GPU worker that served it, -1 never served
    completions: np.ndarray  # times each request completed (1 in a correct run)
    stats: list[StatsSample]
    monitor_decisions: list[MonitorDecision]
    switches: list[WorkerSwitch]
    events: int
    wall_s: float
    index_tier: IndexTierReport | None = None  # when the config models the cache index tier

    @property
    def name(self) -> str:
        return self.workload.name

    @property
    def events_per_s(self) -> float:
        return self.events / self.wall_s if self.wall_s > 0 else float("inf")

    @property
    def model_names(self) -> list[str]:
        """served_by's codes by name: the large model, then the small tiers."""
        return ["large", *self.config.profile.tier_names()]

    def served_per_model(self) -> dict[str, int]:
        codes = self.served_by[self.completions > 0]
        return {name: int(np.sum(codes == code)) for code, name in enumerate(self.model_names)}

    def gpu_seconds_per_image(self) -> dict[str, float | int | None]:
        """Cost per served image over the whole run: busy (model compute: each request's start to end on its GPU)
        and provisioned (every GPU held from the first arrival to the last completion), in GPU-seconds."""
        served = self.completions > 0
        images = int(served.sum())
        if not images:
            return {
                "images": 0,
                "busy_gpu_s": 0.0,
                "provisioned_gpu_s": 0.0,
                "busy_per_image": None,
                "provisioned_per_image": None,
            }
        busy = float(np.sum(self.end_s[served] - self.start_s[served]))
        provisioned = self.config.n_gpus * float(np.nanmax(self.end_s) - np.nanmin(self.arrival_s))
        return {
            "images": images,
            "busy_gpu_s": busy,
            "provisioned_gpu_s": provisioned,
            "busy_per_image": busy / images,
            "provisioned_per_image": provisioned / images,
        }

    def to_records(self) -> list[RequestRecord]:
        trace = self.workload.trace
        names = self.model_names
        mode = self.config.system.value
        records = []
        for i in range(self.workload.n_requests):
            source = trace[i] if trace is not None else None
            done = self.completions[i] > 0
            hit = bool(self.hit[i])
            records.append(
                RequestRecord(
                    index=i,
                    prompt=source.prompt if source else "",
                    source_row=source.source_row if source else i,
                    user=source.user if source else None,
                    session=source.session if source else None,
                    edit=source.edit if source else None,
                    warm_up=bool(self.workload.warm_up[i]),
                    arrival_s=_opt(self.arrival_s[i]),
                    start_s=_opt(self.arrival_s[i]),
                    end_s=_opt(self.end_s[i]) if done else None,
                    latency_s=float(self.end_s[i] - self.arrival_s[i]) if done else None,
                    outcome=Outcome.OK if done else Outcome.NOT_SENT,
                    hit=hit if done else None,
                    score=_opt(self.score[i]),
                    k=int(self.k[i]) if hit else None,
                    model=names[self.served_by[i]] if done else None,
                    mode=mode,
                    timings_json=json.dumps(
                        {
                            "queue": float(self.start_s[i] - self.arrival_s[i]),
                            "generate": float(self.end_s[i] - self.start_s[i]),
                        }
                    )
                    if done
                    else None,
                )
            )
        return records

    def summary(self, reference_latency_s: float | None = None) -> RunSummary:
        """loadgen's summary of the run; SLOs relative to the large model's standalone latency by default."""
        reference = self.config.reference_latency_s if reference_latency_s is None else reference_latency_s
        return summarize(self.to_records(), name=self.name, reference_latency_s=reference, stop_reason="completed")

    def fast_metrics(self, reference_latency_s: float | None = None) -> FastMetrics:
        reference = self.config.reference_latency_s if reference_latency_s is None else reference_latency_s
        measured = ~self.workload.warm_up
        ok = measured & (self.completions > 0)
        latency = (self.end_s - self.arrival_s)[ok]
        makespan = float(self.end_s[ok].max() - self.arrival_s[measured].min()) if ok.any() else float("nan")
        n_measured = int(measured.sum())
        return FastMetrics(
            n_requests=n_measured,
            n_ok=int(ok.sum()),
            makespan_s=makespan,
            throughput_req_per_min=ok.sum() / makespan * 60.0 if makespan > 0 else float("nan"),
            hit_rate=float(self.hit[ok].mean()) if ok.any() else float("nan"),
            latency_p50_s=float(np.percentile(latency, 50)) if latency.size else float("nan"),
            latency_p99_s=float(np.percentile(latency, 99)) if latency.size else float("nan"),
            slo_attainment={
                slo_key(m): float(np.sum(latency <= m * reference) / max(n_measured, 1)) for m in SLO_MULTIPLIERS
            },
        )

    def cost(self) -> dict[str, float]:
        return {
            "wall_s": self.wall_s,
            "events": self.events,
            "events_per_s": self.events_per_s,
            "requests": self.workload.n_requests,
            "gpus": self.config.n_gpus,
            "simulated_s": float(np.nanmax(self.end_s)) if self.workload.n_requests else 0.0,
        }

    def metadata(self) -> dict[str, Any]:
        arrival = self.workload.arrival
        return {
            # The keys loadgen's StoredRun reads (name, arrival kind and rate), then the simulator's own.
            "config": {"name": self.name, "arrival": arrival.model_dump(mode="json") if arrival else {}},
            "reference_latency_s": self.config.reference_latency_s,
            "stop_reason": "completed",
            "simulator": self.config.model_dump(mode="json"),
            "cost": self.cost(),
        }

    def write(self, out_dir: str | Path, *, plots: bool = True) -> dict[str, Path]:
        """A loadgen-style run directory plus sim.json (monitor decisions, switches, cost)."""
        records = self.to_records()
        summary = self.summary()
        paths = write_run_files(
            out_dir,
            self.name,
            records,
            self.stats,
            self.metadata(),
            summary,
            self.config.reference_latency_s,
            plots=plots,
        )
        paths["sim"] = Path(out_dir) / "sim.json"
        paths["sim"].write_text(
            json.dumps(
                {
                    "cost": self.cost(),
                    "config": self.config.model_dump(mode="json"),
                    "monitor_decisions": [asdict(d) for d in self.monitor_decisions],
                    "switches": [asdict(s) for s in self.switches],
                    "served_per_model": self.served_per_model(),
                    "gpu_seconds_per_image": self.gpu_seconds_per_image(),
                    "index_tier": None if self.index_tier is None else asdict(self.index_tier),
                },
                indent=1,
            )
        )
        return paths


def _opt(value: float) -> float | None:
    return None if np.isnan(value) else float(value)
