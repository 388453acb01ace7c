"""Every Prometheus instrument of the app, exported through Ray's metrics agent (ray.serve.metrics).

Names start with modm_ and end in a unit; tag keys are bounded (model, decision, k, mode). Request ids and prompts
go to logs, never to labels.
"""

from __future__ import annotations

from ray.serve import metrics

LATENCY_BUCKETS_S = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 90, 120, 180, 300, 600]
OVERHEAD_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]


class RouterMetrics:
    def __init__(self, mode: str):
        self.mode = mode
        self.requests = metrics.Counter(
            "modm_requests_total", "Image requests by outcome.", tag_keys=("mode", "decision", "status")
        )
        self.hits_by_k = metrics.Counter(
            "modm_hits_by_k_total", "Cache hits by steps skipped (k).", tag_keys=("mode", "k")
        )
        self.latency = metrics.Histogram(
            "modm_request_latency_seconds",
            "End-to-end latency of a request.",
            boundaries=LATENCY_BUCKETS_S,
            tag_keys=("mode", "model"),
        )
        self.overhead = metrics.Histogram(
            "modm_routing_overhead_seconds",
            "Embedding + retrieval + decision time per request.",
            boundaries=OVERHEAD_BUCKETS_S,
            tag_keys=("mode",),
        )
        self.queue_depth = metrics.Gauge(
            "modm_queue_depth", "Requests in flight per model pool.", tag_keys=("mode", "model")
        )
        self.admissions_dropped = metrics.Counter(
            "modm_admissions_dropped_total",
            "Results not cached because the admission backlog was full.",
            tag_keys=("mode",),
        )
        self.retrieval_failures = metrics.Counter(
            "modm_retrieval_failures_total",
            "Requests served as misses because embedding or retrieval failed.",
            tag_keys=("mode",),
        )

    # modm.serving.metrics.ServingMetrics
    def request_finished(self, decision: str, status: str, model: str | None, k: int, seconds: float | None) -> None:
        self.requests.inc(tags={"mode": self.mode, "decision": decision, "status": status})
        if decision == "hit":
            self.hits_by_k.inc(tags={"mode": self.mode, "k": str(k)})
        if model is not None and seconds is not None:
            self.latency.observe(seconds, tags={"mode": self.mode, "model": model})

    def in_flight(self, model: str, n: int) -> None:
        self.queue_depth.set(n, tags={"mode": self.mode, "model": model})

    def retrieval_overhead(self, seconds: float) -> None:
        self.overhead.observe(seconds, tags={"mode": self.mode})

    def retrieval_failed(self) -> None:
        self.retrieval_failures.inc(tags={"mode": self.mode})

    def admission_dropped(self) -> None:
        self.admissions_dropped.inc(tags={"mode": self.mode})


class IngressMetrics:
    """What the Ingress does when a Router replica is lost under a request."""

    def __init__(self, mode: str):
        self.mode = mode
        self.router_redrives = metrics.Counter(
            "modm_router_redrives_total",
            "Requests whose Router replica was lost mid-request, by outcome: redriven (sent once more, to another "
            "replica) or router_unavailable (no replica took it either: 503 with Retry-After).",
            tag_keys=("mode", "outcome"),
        )

    def router_lost(self, outcome: str) -> None:
        """`outcome`: "redriven" or "router_unavailable"."""
        self.router_redrives.inc(tags={"mode": self.mode, "outcome": outcome})


class MonitorMetrics:
    """modm.serving.monitor.MonitorMetricsSink."""

    def __init__(self):
        self.replicas = metrics.Gauge(
            "modm_allocation_replicas", "Replicas the monitor assigns per model.", tag_keys=("model",)
        )
        self.target = metrics.Gauge("modm_allocation_target_large", "Algorithm 1 target for large replicas.")
        self.window_rate = metrics.Gauge("modm_window_request_rate_per_min", "R over the last monitor window.")
        self.window_hit_rate = metrics.Gauge("modm_window_hit_rate", "H over the last monitor window.")
        self.tier_replicas = metrics.Gauge(
            "modm_tier_replicas", "Replicas the monitor assigns per small-model tier.", tag_keys=("tier",)
        )
        self.tier_chosen = metrics.Gauge(
            "modm_tier_chosen", "1 for the small-model tier that refines hits, 0 for the others.", tag_keys=("tier",)
        )
        self.tier_share = metrics.Gauge(
            "modm_tier_budget_share",
            "Share of the GPU budget the last window's misses and hits would need with each small-model tier.",
            tag_keys=("tier",),
        )

    def window(self, request_rate: float, hit_rate: float) -> None:
        self.window_rate.set(request_rate)
        self.window_hit_rate.set(hit_rate)

    def allocation(self, large: int, small: int, target: float) -> None:
        self.replicas.set(large, tags={"model": "large"})
        self.replicas.set(small, tags={"model": "small"})
        self.target.set(target)

    def tier(self, replicas: dict[str, int], chosen: str, shares: dict[str, float]) -> None:
        for name, n in replicas.items():
            self.tier_replicas.set(n, tags={"tier": name})
            self.tier_chosen.set(1.0 if name == chosen else 0.0, tags={"tier": name})
        for name, share in shares.items():  # none before the first window
            self.tier_share.set(share, tags={"tier": name})


BATCH_SIZE_BUCKETS = [1.5, 2.5, 4.5, 8.5, 16.5, 32.5, 64.5]  # upper bounds: batches of 1, 2, 3-4, 5-8, ...


class ModelMetrics:
    """modm.generation.ModelService's metrics sink (`ModelMetricsSink`) in a Serve replica."""

    def __init__(self, role: str):
        self.role = role
        self.compute = metrics.Histogram(
            "modm_model_compute_seconds",
            "Model compute time per image.",
            boundaries=LATENCY_BUCKETS_S,
            tag_keys=("model", "task"),
        )

        self.batch_size = metrics.Histogram(
            "modm_model_batch_size",
            "Requests per model pass (one pipeline call, or one denoising step of a step-level batch).",
            boundaries=BATCH_SIZE_BUCKETS,
            tag_keys=("model",),
        )
        self.feature_cache_calls = metrics.Counter(
            "modm_model_feature_cache_calls_total",
            "Calls of the modules a feature cache hooks (blocks or attention), by whether diffusers' hook computed "
            "or skipped them.",
            tag_keys=("model", "kind", "outcome"),
        )

    def feature_cache(self, kind: str, skipped: int, total: int) -> None:
        for outcome, calls in (("skipped", skipped), ("computed", total - skipped)):
            if calls:
                self.feature_cache_calls.inc(calls, tags={"model": self.role, "kind": kind, "outcome": outcome})

    def observe(self, task: str, seconds: float) -> None:
        self.compute.observe(seconds, tags={"model": self.role, "task": task})

    def batch(self, size: int) -> None:
        self.batch_size.observe(size, tags={"model": self.role})
