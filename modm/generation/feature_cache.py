"""Feature caches on a loaded denoiser through diffusers' own hooks (`diffusers.hooks`), with per-request state.

`FeatureCache(denoiser, spec)` applies the hook `spec.kind` names (`apply_first_block_cache`,
`apply_taylorseer_cache`, `apply_pyramid_attention_broadcast`) and adds one modm hook on the denoiser itself that
gives diffusers' hooks what modm's pipelines do not: a cache context (only FLUX's pipeline opens one) and the current
timestep (PAB's `current_timestep_callback`, read from the denoiser's own `timestep` argument, so it also holds in
the step-batching engine, which calls the denoiser directly).

Per-request state. diffusers' hooks decide skip or compute once per forward for the whole batch tensor, and keep
one state per hook (per cache-context name). modm therefore gives every request its own `RequestCacheState`:
`FeatureCache.serving(state)` installs the request's hook states for the forwards inside it and counts, per request,
the hooked modules computed and skipped. A request's cache decisions never depend on the other requests of its
batch:
- TaylorSeer and PAB are *batch-invariant* (`FeatureCache.batch_invariant`): whether a forward computes is a
  function of the step alone (TaylorSeer: the forward's index in the run; PAB: that and the timestep), and what they
  cache or extrapolate is per-sample tensors. The requests of one request-level batch run the same schedule (same
  steps, and strength or resume step: `batch_key`), so they share one state and one denoiser pass each step and
  every request gets exactly the decisions, counts and (to float rounding) the image it would get alone.
- The first-block cache compares the whole batch's first-block residual with its threshold, so a feature-cached
  model of that kind runs its requests one per pipeline call.
The step engine batches requests at different steps, whose schedules differ: it gives each feature-cached request a
pass of its own, whatever the kind.

`feature_cache_problem(denoiser class name, kind)` is the build-time check: which kinds reach which denoisers, and
why not otherwise.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from diffusers.hooks import (
    FirstBlockCacheConfig,
    HookRegistry,
    ModelHook,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
    apply_first_block_cache,
    apply_pyramid_attention_broadcast,
    apply_taylorseer_cache,
)
from diffusers.hooks.hooks import CacheContext, StateManager

from modm.config.feature_cache import FEATURE_CACHE_INFO_KEY, FeatureCacheConfig, FeatureCacheKind

__all__ = [
    "BATCH_INVARIANT_KINDS",
    "FEATURE_CACHE_INFO_KEY",
    "FeatureCache",
    "RequestCacheState",
    "SkipCounts",
    "feature_cache_problem",
]


_BLOCK_CACHES = (FeatureCacheKind.FIRST_BLOCK, FeatureCacheKind.TAYLORSEER)
# The kinds whose decisions depend on the step only (see the module docstring): a request batch shares their passes.
BATCH_INVARIANT_KINDS = frozenset({FeatureCacheKind.TAYLORSEER, FeatureCacheKind.PYRAMID_ATTENTION_BROADCAST})
# The kinds each denoiser class takes, checked on the tiny models of the real classes (tests/unit/test_feature_cache*).
KINDS_BY_DENOISER: dict[str, tuple[FeatureCacheKind, ...]] = {
    "SD3Transformer2DModel": _BLOCK_CACHES,
    "FluxTransformer2DModel": _BLOCK_CACHES,
    "UNet2DConditionModel": (FeatureCacheKind.PYRAMID_ATTENTION_BROADCAST,),
    "SanaTransformer2DModel": (FeatureCacheKind.PYRAMID_ATTENTION_BROADCAST,),
}
_WHY_NOT = {
    ("UNet2DConditionModel", FeatureCacheKind.FIRST_BLOCK): "its blocks are U-Net down/up blocks, not a "
    "transformer-block list diffusers' first-block cache chains",
    ("UNet2DConditionModel", FeatureCacheKind.TAYLORSEER): "TaylorSeer's module patterns (^transformer_blocks.*attn) "
    "match none of its modules",
    ("SanaTransformer2DModel", FeatureCacheKind.FIRST_BLOCK): "SanaTransformerBlock is not in diffusers' "
    "TransformerBlockRegistry, which the first-block cache needs",
    ("SanaTransformer2DModel", FeatureCacheKind.TAYLORSEER): "TaylorSeer's module patterns (^transformer_blocks.*attn) "
    "match none of its modules (its attention is attn1/attn2)",
}
_UNITS = {
    FeatureCacheKind.FIRST_BLOCK: "transformer blocks",
    FeatureCacheKind.TAYLORSEER: "attention modules",
    FeatureCacheKind.PYRAMID_ATTENTION_BROADCAST: "attention modules",
}
_HOOK_NAMES = {
    FeatureCacheKind.FIRST_BLOCK: ("fbc_leader_block_hook", "fbc_block_hook"),
    FeatureCacheKind.TAYLORSEER: ("taylorseer_cache",),
    FeatureCacheKind.PYRAMID_ATTENTION_BROADCAST: ("pyramid_attention_broadcast",),
}
_CONTEXT_HOOK = "modm_feature_cache_context"


def feature_cache_problem(denoiser_name: str | None, kind: FeatureCacheKind) -> str | None:
    """Why diffusers' `kind` hook cannot reach this denoiser class, or None."""
    kinds = KINDS_BY_DENOISER.get(denoiser_name or "")
    if kinds is None:
        known = ", ".join(KINDS_BY_DENOISER)
        return f"{kind.value} (as every feature cache) is wired for {known}; this model's denoiser is {denoiser_name}"
    if kind in kinds:
        return None
    why = _WHY_NOT.get((denoiser_name, kind), "diffusers' hook does not reach it")
    takes = ", ".join(k.value for k in kinds)
    return f"{kind.value} does not apply to {denoiser_name}: {why}; it takes {takes}"


@dataclass
class SkipCounts:
    """Hooked-module calls of one request: how many ran and how many diffusers' hook answered from its cache."""

    kind: str
    unit: str
    computed: int = 0
    total: int = 0

    @property
    def skipped(self) -> int:
        return self.total - self.computed

    def as_dict(self) -> dict:
        return {"kind": self.kind, "unit": self.unit, "skipped": self.skipped, "total": self.total}


@dataclass(eq=False)
class RequestCacheState:
    """One request's hook states (one entry per stateful hook, created on its first forward) and its counts."""

    counts: SkipCounts
    states: dict[int, object] = field(default_factory=dict)


class _CountingHooks:
    """Wraps each cache hook's forward references (diffusers' `HookFunctionReference`) to count its calls."""

    def __init__(self, hooks):
        self.counts: SkipCounts | None = None
        for hook in hooks:
            ref = hook.fn_ref
            ref.pre_forward = self._counting(ref.pre_forward, "total")
            ref.original_forward = self._counting(ref.original_forward, "computed")

    def _counting(self, function, counter: str):
        def counted(*args, **kwargs):
            if self.counts is not None:
                setattr(self.counts, counter, getattr(self.counts, counter) + 1)
            return function(*args, **kwargs)

        return counted


class FeatureCache:
    def __init__(self, denoiser: torch.nn.Module, spec: FeatureCacheConfig):
        problem = feature_cache_problem(type(denoiser).__name__, spec.kind)
        if problem:
            raise ValueError(problem)
        self.spec = spec
        self.kind = spec.kind
        self._timestep: float | None = None
        self._apply(denoiser, spec)
        self._hooks = [
            hook
            for module in denoiser.modules()
            if hasattr(module, "_diffusers_hook")
            for name, hook in module._diffusers_hook.hooks.items()
            if name in _HOOK_NAMES[spec.kind]
        ]
        if not self._hooks:
            raise ValueError(f"diffusers' {spec.kind.value} hook found no module of {type(denoiser).__name__} to cache")
        self._counting = _CountingHooks(self._hooks)
        self._state_managers = [manager for hook in self._hooks for manager in _state_managers(hook)]
        HookRegistry.check_if_exists_or_initialize(denoiser).register_hook(_ContextHook(self, denoiser), _CONTEXT_HOOK)
        # Which request's states are installed; one serving() at a time (pipelines are not re-entrant either).
        self._serving = threading.Lock()

    @property
    def hooked_modules(self) -> int:
        return len(self._hooks)

    @property
    def batch_invariant(self) -> bool:
        """Whether requests that run the same schedule can share one state and one pass per step."""
        return self.kind in BATCH_INVARIANT_KINDS

    def _apply(self, denoiser: torch.nn.Module, spec: FeatureCacheConfig) -> None:
        if spec.kind is FeatureCacheKind.FIRST_BLOCK:
            apply_first_block_cache(_cacheable_blocks(denoiser), FirstBlockCacheConfig(threshold=spec.threshold))
        elif spec.kind is FeatureCacheKind.TAYLORSEER:
            config = TaylorSeerCacheConfig(
                cache_interval=spec.cache_interval,
                disable_cache_before_step=spec.disable_cache_before_step,
                disable_cache_after_step=spec.disable_cache_after_step,
                max_order=spec.max_order,
                taylor_factors_dtype=getattr(torch, spec.taylor_factors_dtype),
                use_lite_mode=spec.use_lite_mode,
            )
            apply_taylorseer_cache(denoiser, config)
        else:
            config = PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=spec.spatial_attention_block_skip_range,
                cross_attention_block_skip_range=spec.cross_attention_block_skip_range,
                spatial_attention_timestep_skip_range=spec.spatial_attention_timestep_skip_range,
                cross_attention_timestep_skip_range=spec.cross_attention_timestep_skip_range,
                current_timestep_callback=self.current_timestep,
            )
            apply_pyramid_attention_broadcast(denoiser, config)

    def current_timestep(self) -> float:
        """The timestep of the denoiser forward running now (PAB's `current_timestep_callback`)."""
        if self._timestep is None:
            raise RuntimeError("the feature cache's timestep is read outside a denoiser forward")
        return self._timestep

    def new_request(self) -> RequestCacheState:
        return RequestCacheState(SkipCounts(self.kind.value, _UNITS[self.kind]))

    @contextmanager
    def serving(self, request: RequestCacheState) -> Iterator[RequestCacheState]:
        """The denoiser forwards inside run with `request`'s hook states (fresh ones on its first) and count into
        its SkipCounts; the hooks' states are the request's own again on its next serving()."""
        with self._serving:
            for hook in self._hooks:
                _install(hook, request.states)
            self._counting.counts = request.counts
            try:
                yield request
            finally:
                self._counting.counts = None

    def _enter_forward(self, timestep) -> list:
        """Set the forward's timestep, and a cache context on the hooks that have none (FLUX's pipeline opens its
        own "cond"/"uncond" ones; the other pipelines and the step engine none); the managers it set."""
        self._timestep = float(torch.as_tensor(timestep).flatten()[0]) if timestep is not None else None
        opened = []
        for manager in self._state_managers:
            try:
                manager.context  # noqa: B018 -- raises ValueError when no context is set
            except ValueError:
                manager.set_context(CacheContext("cond"))
                opened.append(manager)
        return opened


def _cacheable_blocks(denoiser: torch.nn.Module) -> torch.nn.Module:
    """What the first-block cache chains: the denoiser, or for SD3 a module holding its transformer blocks but the
    last. SD3's last JointTransformerBlock is `context_pre_only` and returns no text states, which diffusers 0.42.1's
    tail hook subtracts from (a TypeError), so that block stays outside the cache and always runs. The hooks attach
    to the block objects themselves, so the view is only needed while applying them."""
    blocks = getattr(denoiser, "transformer_blocks", None)
    if blocks is None or not getattr(blocks[-1], "context_pre_only", False):
        return denoiser
    view = torch.nn.Module()
    view.transformer_blocks = torch.nn.ModuleList(list(blocks)[:-1])
    return view


def _state_managers(hook) -> list:
    return [value for value in vars(hook).values() if isinstance(value, StateManager)]


def _install(hook, states: dict[int, object]) -> None:
    """Point `hook` at the request's state (created fresh on first use). diffusers 0.42.1 keeps a stateful hook's
    state either in a `StateManager` (one state per context name, in its `_state_cache`) or as `hook.state`."""
    key = id(hook)
    managers = _state_managers(hook)
    if managers:
        for index, manager in enumerate(managers):
            manager._state_cache = states.setdefault((key, index), {})
        return
    if key not in states:
        states[key] = type(hook.state)()
    hook.state = states[key]


class _ContextHook(ModelHook):
    """On the denoiser itself: each forward gets its timestep and, if none is open, a cache context."""

    def __init__(self, cache: FeatureCache, denoiser: torch.nn.Module):
        super().__init__()
        self.cache = cache
        self.signature = inspect.signature(type(denoiser).forward)

    def new_forward(self, module, *args, **kwargs):
        bound = self.signature.bind_partial(module, *args, **kwargs).arguments
        opened = self.cache._enter_forward(bound.get("timestep"))
        try:
            return self.fn_ref.original_forward(*args, **kwargs)
        finally:
            for manager in opened:
                manager.set_context(None)
            self.cache._timestep = None
