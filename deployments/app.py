"""The app builder: `import_path: deployments.app:build_app` in a Serve config.

`args` (validated by AppArgs): the system config (a YAML path or inline), per-deployment Ray actor options, and
whether to check the cluster's resources first. The builder binds the deployments MODE_DEPLOYMENTS names for the
config's mode: LargeModel, SmallModel (and SmallModel2, ... per models.small_tiers entry), Embedder, CacheIndex
(and CacheReader when cache.read_replicas > 0), Monitor
and the Router in modm mode; LargeModel and the Router in vanilla mode; LargeModel, Embedder, LatentCache and the
Router in nirvana mode; and in every mode the ResponseStore of images answered as URLs and the HTTP Ingress in front
of the Routers (with more than one Router, also the LoadBoard where they share their load). Each build generates the
key that signs those URLs and hands it to every Router replica (a redeploy invalidates the links of the previous
one, as their images are gone too).
"""

from __future__ import annotations

import logging
import re
import secrets
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve

from deployments.constants import (
    AUTOSCALING_LOOK_BACK_S,
    AUTOSCALING_METRICS_INTERVAL_S,
    DEFAULT_DEPLOYMENT_OPTIONS,
    GRACEFUL_SHUTDOWN_MARGIN,
)
from modm.config import (
    ConfigError,
    ModelSpec,
    SystemConfig,
    SystemMode,
    config_from_dict,
    load_config,
    resolve_relative_paths,
)
from modm.embedding import embedding_dim
from modm.parallel import ParallelMethod
from modm.policy import NIRVANA_K_CHOICES
from modm.policy.api_keys import ApiKeyRing
from modm.roles import ModelRole

logger = logging.getLogger("ray.serve")

DEPLOYMENT_NAMES = (
    "Ingress",
    "Router",
    "LoadBoard",
    "Embedder",
    "CacheIndex",
    "CacheReader",
    "LargeModel",
    "SmallModel",
    "Monitor",
    "LatentCache",
    "ResponseStore",
)
# Which deployments each mode runs, in binding order (each after the deployments it calls; the HTTP Ingress last).
# LatentCache: NIRVANA's cache of intermediate latents; ResponseStore: the images answered as URLs; CacheReader: the
# image cache's reader replicas, bound only when cache.read_replicas > 0; LoadBoard: where several Routers share their
# load, bound only when serving.router_replicas > 1 (`deployment_names`). The builder binds exactly these.
MODE_DEPLOYMENTS = {
    SystemMode.MODM: (
        "LargeModel",
        "SmallModel",
        "Embedder",
        "CacheIndex",
        "CacheReader",
        "Monitor",
        "ResponseStore",
        "LoadBoard",
        "Router",
        "Ingress",
    ),
    SystemMode.VANILLA: ("LargeModel", "ResponseStore", "LoadBoard", "Router", "Ingress"),
    SystemMode.NIRVANA: ("LargeModel", "Embedder", "LatentCache", "ResponseStore", "LoadBoard", "Router", "Ingress"),
}
MODEL_DEPLOYMENTS = {ModelRole.LARGE: "LargeModel", ModelRole.SMALL: "SmallModel"}
# Each small-model tier after the first is a deployment of its own, named like its tier (small2 -> SmallModel2),
# with SmallModel's defaults.
TIER_DEPLOYMENT = re.compile(r"SmallModel([2-9]|[1-9][0-9]+)")
ACTOR_OPTION_KEYS = {"num_cpus", "num_gpus", "memory", "resources", "accelerator_type", "runtime_env"}

# Per-replica concurrency: a model replica runs one generation at a time (one GPU) unless it batches
# (model_max_ongoing); the others are light.
MAX_ONGOING = {
    "Ingress": 1024,
    "Router": 512,
    "LoadBoard": 256,
    "Embedder": 64,
    "CacheIndex": 256,
    "CacheReader": 256,
    "LargeModel": 1,
    "SmallModel": 1,
    "Monitor": 64,
    "LatentCache": 256,
    "ResponseStore": 256,
}
DEFAULT_ACTOR_OPTIONS = {
    # Logical shares: the Ingress only parses and forwards, the Router awaits other deployments, and an app runs
    # several of each, so a test cluster of a few CPUs still holds the apps it runs at once.
    "Ingress": {"num_cpus": 0.05},
    "Router": {"num_cpus": 0.1},
    "LoadBoard": {"num_cpus": 0.05},
    "Embedder": {"num_cpus": 1},
    "CacheIndex": {"num_cpus": 0.5},
    "CacheReader": {"num_cpus": 0.5},
    "LargeModel": {"num_cpus": 1},
    "SmallModel": {"num_cpus": 1},
    "Monitor": {"num_cpus": 0.1},
    "LatentCache": {"num_cpus": 0.5},
    "ResponseStore": {"num_cpus": 0.1},
}


# Serve runs a replica's code, and the routing of its handle calls, on event loops of their own beside the replica's
# main loop by default; each request then crosses threads at every hop. The light deployments on the request path
# never block their loop (their work runs in threads), so they run both on the main loop, as Serve's
# throughput-optimized mode does: about 1.5 ms less per hop here (benchmarks/serve_hop_floor.py).
SAME_LOOP_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}
SAME_LOOP_DEPLOYMENTS = ("Ingress", "Router", "LoadBoard", "Embedder", "CacheIndex", "CacheReader")


class AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: str | None = Field(default=None, description="Path of a system config YAML (modm.config schema).")
    system: dict | None = Field(default=None, description="The system config inline, instead of a path.")
    actor_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Ray actor options per deployment, e.g. {LargeModel: {num_gpus: 1}}."
    )
    check_resources: bool = Field(
        default=True,
        description="Fail fast when the cluster cannot hold the app (turn off on autoscaling "
        "clusters that add nodes on demand).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> "AppArgs":
        if (self.config is None) == (self.system is None):
            raise ValueError("give exactly one of 'config' (a YAML path) or 'system' (inline)")
        for name, options in self.actor_options.items():
            if name not in DEPLOYMENT_NAMES and not TIER_DEPLOYMENT.fullmatch(name):
                raise ValueError(f"actor_options: unknown deployment {name!r}; choose from {DEPLOYMENT_NAMES}")
            unknown = set(options) - ACTOR_OPTION_KEYS
            if unknown:
                raise ValueError(f"actor_options.{name}: unsupported option(s) {sorted(unknown)}")
        return self

    def system_config(self) -> SystemConfig:
        return load_config(self.config) if self.config else config_from_dict(self.system, "args.system")

    def options_for(self, name: str) -> dict[str, Any]:
        options = {**DEFAULT_ACTOR_OPTIONS[_defaults_of(name)], **self.actor_options.get(name, {})}
        if name in SAME_LOOP_DEPLOYMENTS:  # the caller's own runtime_env and env_vars kept, and winning
            runtime_env = dict(options.get("runtime_env") or {})
            runtime_env["env_vars"] = {**SAME_LOOP_ENV, **runtime_env.get("env_vars", {})}
            options["runtime_env"] = runtime_env
        return options


def _defaults_of(name: str) -> str:
    return "SmallModel" if TIER_DEPLOYMENT.fullmatch(name) else name


def tier_deployment_name(tier: str) -> str:
    """The deployment of small-model tier `tier`: small -> SmallModel, small2 -> SmallModel2, ..."""
    return MODEL_DEPLOYMENTS[ModelRole.SMALL] + tier[len(ModelRole.SMALL.value) :]


def model_autoscaling(system: SystemConfig, role: str) -> dict:
    """Replica bounds of a model deployment within the GPU budget N; the monitor's target drives the count. `role`:
    'large' or a small-model tier. With several tiers every small one may go to zero replicas (a tier not chosen);
    the first starts with min_small, the others with none."""
    n, min_small = system.monitor.gpu_budget, system.monitor.min_small
    tiered = len(system.models.tiers()) > 1
    if role == ModelRole.LARGE.value:
        low, high, initial = 1, n - min_small, n - min_small
    else:
        initial = min_small if role == ModelRole.SMALL.value else 0
        low, high = (0 if tiered else min_small), n - 1
    return {
        "min_replicas": low,
        "max_replicas": high,
        "initial_replicas": initial,
        "metrics_interval_s": AUTOSCALING_METRICS_INTERVAL_S,
        "look_back_period_s": AUTOSCALING_LOOK_BACK_S,
        # The PID controller already smooths; Serve's own delays would only add lag.
        "upscale_delay_s": 0.0,
        "downscale_delay_s": 0.0,
        "policy": {"policy_function": "deployments.autoscaling:monitor_target_policy"},
    }


def graceful_shutdown_s(spec: ModelSpec, system: SystemConfig) -> float:
    """Serve's graceful-shutdown timeout of a model replica: long enough for its longest in-flight generation.

    Serve stops routing to a replica picked for removal and waits up to this long for its ongoing requests, so a
    monitor move loses no generation. The longest generation is profiled_latency_s (default size, default steps)
    scaled by the largest request's pixels and steps, times GRACEFUL_SHUTDOWN_MARGIN. No request outlives the
    router's request_timeout_s (it is cancelled then, and the cancel stops the pipeline at its next step), so that
    is the cap, and also the safe default when the model has no profile.
    """
    cap = system.serving.request_timeout_s
    if spec.profiled_latency_s is None:
        return cap
    pixels = (spec.max_size / spec.default_size) ** 2
    steps = max(1.0, system.limits.max_steps / spec.num_inference_steps)
    # A batching replica holds up to model_max_ongoing(spec) requests; no batching gain is assumed.
    held = model_max_ongoing(spec)
    return min(cap, spec.profiled_latency_s * pixels * steps * held * GRACEFUL_SHUTDOWN_MARGIN)


def model_max_ongoing(spec: ModelSpec) -> int:
    """Requests a model replica holds at once: one without batching; with it, a running batch and the next one
    forming behind it (more would only queue inside the replica, where the router cannot see or re-route them)."""
    if spec.parallel.method is not ParallelMethod.NONE:
        return 1  # a parallel group runs one request at a time on all its ranks (it does not batch)
    return 2 * spec.batching.max_batch_size if spec.batching.batches else 1


def _checked_warm(system: SystemConfig) -> SystemConfig:
    """cache.warm: its prompts file made absolute (replicas run elsewhere) and readable now, at build time."""
    from modm.cache.warm import read_prompts

    warm = system.cache.warm
    if warm is None:
        return system
    if system.mode is SystemMode.VANILLA:
        raise ConfigError("cache.warm: mode 'vanilla' keeps no cache to warm")
    if system.mode is SystemMode.NIRVANA and system.models.large.num_inference_steps != system.policy.total_steps:
        raise ConfigError(
            f"cache.warm: NIRVANA caches latents only of {system.policy.total_steps}-step runs "
            f"(policy.total_steps), but models.large.num_inference_steps is "
            f"{system.models.large.num_inference_steps}"
        )
    path = Path(warm.prompts).expanduser()
    path = path if path.is_absolute() else Path.cwd() / path
    try:
        read_prompts(path, warm.limit)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"cache.warm.prompts: {err}") from None
    warm = warm.model_copy(update={"prompts": str(path)})
    return system.model_copy(update={"cache": system.cache.model_copy(update={"warm": warm})})


def _on_gpu(spec: ModelSpec, options: dict) -> bool:
    return spec.device.startswith("cuda") or (spec.device == "auto" and options.get("num_gpus", 0) > 0)


def parallel_placement(spec: ModelSpec, options: dict) -> dict:
    """Serve options of a parallel model deployment: its ranks declared as placement-group bundles after the
    replica's own, so Serve reserves them with each replica (and the autoscaler sees them), and removes them with
    it. STRICT_PACK on GPUs (the ranks' collectives want one node's interconnect); PACK on CPUs."""
    from deployments.actor_group import rank_bundles

    if spec.parallel.world_size == 1:
        return {}
    replica = {
        "CPU": float(options.get("num_cpus", 1)),
        "GPU": float(options.get("num_gpus", 0)),
        "memory": float(options.get("memory", 0)),
        **options.get("resources", {}),
    }
    if options.get("accelerator_type"):  # Ray adds this resource to the replica actor
        replica[f"accelerator_type:{options['accelerator_type']}"] = 0.001
    replica = {k: v for k, v in replica.items() if v > 0} or {"CPU": 0.01}  # a bundle may not be empty
    on_gpu = _on_gpu(spec, options)
    return {
        "placement_group_bundles": [replica, *rank_bundles(spec.parallel.world_size, use_gpu=on_gpu)],
        "placement_group_strategy": "STRICT_PACK" if on_gpu else "PACK",
    }


def replica_resources(options: dict, spec) -> dict:
    """A model replica's own resources plus the placement-group bundles of its parallel ranks (one device each)."""
    if spec is None or spec.parallel.world_size == 1:
        return options
    on_gpu = _on_gpu(spec, options)
    device_key = "num_gpus" if on_gpu else "num_cpus"
    return {**options, device_key: options.get(device_key, 0) + spec.parallel.world_size}


def deployment_names(system: SystemConfig) -> tuple[str, ...]:
    """The deployments the builder binds for `system`, in binding order (MODE_DEPLOYMENTS, CacheReader only when
    cache.read_replicas > 0, LoadBoard only with several Routers: one Router's own counts are the cluster's)."""
    names = []
    for name in MODE_DEPLOYMENTS[system.mode]:
        if name == "SmallModel":  # one deployment per small-model tier
            names += [tier_deployment_name(tier) for tier in system.models.tiers()]
        elif replicas_of(system, name) > 0:
            names.append(name)
    return tuple(names)


def replicas_of(system: SystemConfig, name: str) -> int:
    """Fixed replica counts of the deployments that are not model pools (0: not bound)."""
    return {
        "CacheReader": system.cache.read_replicas,
        "LoadBoard": int(system.serving.router_replicas > 1),
        "Router": system.serving.router_replicas,
        "Ingress": system.serving.ingress_replicas,
    }.get(name, 1)


def required_resources(system: SystemConfig, args: AppArgs) -> dict[str, float]:
    """Peak logical resources: N model replicas (the widest of the two models), the fixed replicas of the others
    (`replicas_of`: cache.read_replicas CacheReaders, the Routers and Ingresses, one of everything else)."""
    names = deployment_names(system)
    tiers = {tier_deployment_name(t): spec for t, spec in system.models.tiers().items()}
    need: dict[str, float] = {}

    def add(options: dict, times: int) -> None:
        for option, resource in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
            need[resource] = need.get(resource, 0.0) + float(options.get(option, 0)) * times
        for key, value in options.get("resources", {}).items():
            need[key] = need.get(key, 0.0) + float(value) * times

    for name in names:
        if name != "LargeModel" and name not in tiers:
            add(args.options_for(name), replicas_of(system, name))
    models = {"LargeModel": system.models.large, **(tiers if system.mode is SystemMode.MODM else {})}
    widest = max(
        (replica_resources(args.options_for(name), spec) for name, spec in models.items()),
        key=lambda o: (o.get("num_gpus", 0), o.get("num_cpus", 0)),
    )
    add(widest, system.monitor.gpu_budget)
    return {k: v for k, v in need.items() if v > 0}


def check_cluster(need: dict[str, float]) -> None:
    import ray

    if not ray.is_initialized():
        return
    have = ray.cluster_resources()
    short = {k: (v, have.get(k, 0.0)) for k, v in need.items() if have.get(k, 0.0) + 1e-9 < v}
    if short:
        detail = ", ".join(f"{k}: needs {v:g}, cluster has {h:g}" for k, (v, h) in short.items())
        raise ValueError(
            f"the cluster cannot hold this app ({detail}). Start Ray with more resources (e.g. "
            f"`ray start --head --num-cpus=8`), lower monitor.gpu_budget, or set "
            f"args.check_resources: false on an autoscaling cluster."
        )


def _deployment(cls, name: str, args: AppArgs, **options):
    opts = {
        **DEFAULT_DEPLOYMENT_OPTIONS,
        "max_ongoing_requests": MAX_ONGOING[_defaults_of(name)],
        "ray_actor_options": args.options_for(name),
        **options,
    }
    logger.info("deployment %s: %s", name, opts)
    return serve.deployment(cls, name=name, **opts)


def _check_capabilities(system) -> None:
    """A model that cannot do what the mode needs (refine, resume, its parallel method, its step count) is refused
    here, naming the field, from its configs alone. A model whose configs cannot be read here (a hub id not cached
    on this node) is checked by its replica when it loads, with the same rule."""
    from modm.generation.capabilities import CapabilityError, check_spec_capabilities, model_needs
    from modm.models.loading import ModelLoadError

    specs = [("large", "models.large", system.models.large)]
    if system.mode is SystemMode.MODM:
        specs += [("small", "models.small", system.models.small)]
        specs += [("small", f"models.small_tiers[{i}]", spec) for i, spec in enumerate(system.models.small_tiers)]
    for role, field, spec in specs:
        if spec is None:
            continue
        try:
            check_spec_capabilities(spec, model_needs(system.mode, role, spec), field=field)
        except CapabilityError as err:
            raise ConfigError(str(err)) from None
        except (ModelLoadError, OSError, ValueError) as err:
            logger.warning(
                "%s: configs of %r not readable at build time (%s); its replica checks it",
                field,
                spec.source,
                err,
            )


def build_app(args: dict) -> serve.Application:
    try:
        parsed = AppArgs.model_validate(args)
        # Pin relative paths to this process's working directory (on a local cluster: where `ray start` ran),
        # so that every replica resolves them alike.
        system = resolve_relative_paths(parsed.system_config(), Path.cwd())
    except ConfigError:
        raise
    except ValueError as err:  # pydantic ValidationError is a ValueError
        raise ValueError(f"invalid app args: {err}") from None
    system = _checked_warm(system)
    _check_capabilities(system)
    if parsed.check_resources:
        check_cluster(required_resources(system, parsed))
    try:
        ApiKeyRing.from_config(system.auth)  # a bad keys file fails the deploy, not every router replica
    except ValueError as err:
        raise ConfigError(str(err)) from None

    return _bind(system, parsed)


def _bind(system: SystemConfig, parsed: AppArgs) -> serve.Application:
    """Bind the app's deployments (deployment_names) in order, each with the handles it calls; the Ingress last."""
    from deployments.cache_index import CacheIndexServer, CacheReaderServer
    from deployments.embedder import EmbedderServer
    from deployments.http_ingress import Ingress
    from deployments.latent_cache import LatentCacheServer
    from deployments.load_board import LoadBoardServer
    from deployments.model import ModelServer
    from deployments.monitor import MonitorServer
    from deployments.response_store import ResponseStoreServer
    from deployments.router import Router

    # Serve fails a model call fast (BackPressureError -> 503) when this many wait at the router's handle.
    queue_bound = {"max_queued_requests": system.backpressure.max_queued_requests or -1}
    dim = embedding_dim(system.embedder) if system.mode is not SystemMode.VANILLA else 0

    tier_specs = system.models.tiers()

    def model(role: ModelRole, tier: str | None = None) -> serve.Application:
        """The large model's deployment, or small-model tier `tier`'s."""
        if tier is None:
            name, spec = MODEL_DEPLOYMENTS[role], system.models.large
        else:
            name, spec = tier_deployment_name(tier), tier_specs[tier]
        replicas = (
            {"autoscaling_config": model_autoscaling(system, tier or role.value)}
            if system.mode is SystemMode.MODM
            else {"num_replicas": system.monitor.gpu_budget}
        )
        snapshots = NIRVANA_K_CHOICES if system.mode is SystemMode.NIRVANA else ()
        return _deployment(
            ModelServer,
            name,
            parsed,
            **replicas,
            **queue_bound,
            graceful_shutdown_timeout_s=graceful_shutdown_s(spec, system),
            max_ongoing_requests=model_max_ongoing(spec),
            **parallel_placement(spec, parsed.options_for(name)),
        ).bind(spec.model_dump(mode="json"), role.value, snapshot_steps=snapshots)

    bound: dict[str, serve.Application] = {}
    # Bound only in modm mode (deployment_names), like SmallModel.
    later_tiers = [tier_deployment_name(t) for t in list(tier_specs)[1:]] if system.mode is SystemMode.MODM else []
    binders = {
        "LargeModel": lambda: model(ModelRole.LARGE),
        **{tier_deployment_name(t): (lambda t=t: model(ModelRole.SMALL, t)) for t in tier_specs},
        "Embedder": lambda: _deployment(EmbedderServer, "Embedder", parsed).bind(
            system.embedder.model_dump(mode="json")
        ),
        "CacheIndex": lambda: _deployment(CacheIndexServer, "CacheIndex", parsed, num_replicas=1).bind(
            system.cache.model_dump(mode="json"), dim
        ),
        # Readers follow the CacheIndex's directory, so they must see it: one node, or the directory on storage that
        # every node mounts at the same path (README, "Read replicas").
        "CacheReader": lambda: _deployment(
            CacheReaderServer, "CacheReader", parsed, num_replicas=system.cache.read_replicas
        ).bind(system.cache.model_dump(mode="json"), dim),
        "LatentCache": lambda: _deployment(LatentCacheServer, "LatentCache", parsed, num_replicas=1).bind(
            system.cache.model_dump(mode="json"), dim, system.policy.total_steps
        ),
        "Monitor": lambda: _deployment(MonitorServer, "Monitor", parsed, num_replicas=1).bind(
            system.monitor.model_dump(mode="json"),
            system.policy.total_steps,
            bound["LargeModel"],
            bound["SmallModel"],
            small_tiers=tuple(bound[name] for name in later_tiers),
            deployment_names={"large": "LargeModel", **{t: tier_deployment_name(t) for t in tier_specs}},
            # With tiers, a small model may have no replica to profile: its configured latency (required then).
            profiled_s={t: spec.profiled_latency_s for t, spec in tier_specs.items()} if later_tiers else None,
        ),
        "ResponseStore": lambda: _deployment(ResponseStoreServer, "ResponseStore", parsed, num_replicas=1).bind(
            system.serving.model_dump(mode="json")
        ),
        "LoadBoard": lambda: _deployment(LoadBoardServer, "LoadBoard", parsed, num_replicas=1).bind(),
        # A stopping Router or Ingress replica finishes the requests it holds; none outlives request_timeout_s.
        "Router": lambda: _deployment(
            Router,
            "Router",
            parsed,
            num_replicas=system.serving.router_replicas,
            graceful_shutdown_timeout_s=system.serving.request_timeout_s,
        ).bind(
            system.model_dump(mode="json"),
            bound["LargeModel"],
            bound.get("SmallModel"),
            bound.get("Embedder"),
            _cache_argument(bound),
            bound.get("Monitor"),
            store=bound["ResponseStore"],
            load_board=bound.get("LoadBoard"),
            signing_key=secrets.token_hex(32),
            small_tiers=tuple(bound[name] for name in later_tiers),
        ),
        "Ingress": lambda: _deployment(
            Ingress,
            "Ingress",
            parsed,
            num_replicas=system.serving.ingress_replicas,
            graceful_shutdown_timeout_s=system.serving.request_timeout_s,
        ).bind(bound["Router"], system.limits.model_dump(mode="json"), system.mode.value),
    }
    for name in deployment_names(system):
        bound[name] = binders[name]()
    return bound["Ingress"]


def _cache_argument(bound: dict[str, serve.Application]):
    """The Router's cache: the CacheIndex alone, or it and its readers (lookups to the readers, admissions to it)."""
    if "CacheReader" in bound:
        from deployments.cache_index import CacheHandles

        return CacheHandles(writer=bound["CacheIndex"], readers=bound["CacheReader"])
    return bound.get("CacheIndex", bound.get("LatentCache"))
