"""The MoDM request path in one process: prompt -> embed -> retrieve -> decide -> generate or refine -> admit.

The Ray deployments call the same pieces separately (embedder, cache, policy, generators); the engine is the
reference composition, used by the demo, the tests and anything that serves without Ray.
"""

from __future__ import annotations

import io
import time
import uuid
from dataclasses import dataclass, field

from PIL import Image

from modm.cache import ImageCache, should_admit
from modm.config.schema import RequestLimits, SystemConfig, SystemMode
from modm.constants import DEFAULT_TENANT
from modm.embedding import Embedder, build_embedder
from modm.generation import DiffusionGenerator, GenerationRequest
from modm.policy import KTable
from modm.policy.requests import check_request_limits

LARGE, SMALL = "large", "small"


@dataclass(frozen=True)
class ImageRequest:
    prompt: str
    tenant: str = DEFAULT_TENANT
    width: int | None = None  # None: the large model's default size
    height: int | None = None
    steps: int | None = None  # None: the large model's T
    seed: int | None = None  # None: the system seed


@dataclass
class DecisionRecord:
    request_id: str
    hit: bool
    score: float | None
    k: int
    strength: float
    model: str  # which model produced the image: "large" or "small"
    mode: str
    matched_entry: int | None = None
    admitted_entry: int | None = None
    timings_s: dict[str, float] = field(default_factory=dict)


@dataclass
class EngineResult:
    image: Image.Image
    record: DecisionRecord


def check_limits(req: ImageRequest, limits: RequestLimits) -> None:
    check_request_limits(req.prompt, req.steps, req.tenant, limits)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class _Timer:
    def __init__(self, timings: dict[str, float], name: str):
        self.timings, self.name = timings, name

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self.timings[self.name] = time.perf_counter() - self.start


class Engine:
    def __init__(
        self,
        config: SystemConfig,
        *,
        large: DiffusionGenerator,
        small: DiffusionGenerator | None = None,
        embedder: Embedder | None = None,
        cache: ImageCache | None = None,
    ):
        if config.mode is SystemMode.NIRVANA:
            raise ValueError("the in-process engine serves modes 'modm' and 'vanilla', not 'nirvana'")
        if config.mode is SystemMode.MODM and (small is None or embedder is None or cache is None):
            raise ValueError("mode 'modm' needs a small model, an embedder and a cache")
        self.config = config
        self.large, self.small = large, small
        self.embedder, self.cache = embedder, cache
        self.k_table = KTable.from_config(config.policy)

    @classmethod
    def from_config(cls, config: SystemConfig) -> "Engine":
        large = DiffusionGenerator.from_spec(config.models.large, LARGE)
        if config.mode is SystemMode.VANILLA:
            return cls(config, large=large)
        small = DiffusionGenerator.from_spec(config.models.small, SMALL)
        embedder = build_embedder(config.embedder)
        cache = ImageCache(config.cache, embedder.dim)
        return cls(config, large=large, small=small, embedder=embedder, cache=cache)

    def resolve(self, req: ImageRequest) -> GenerationRequest:
        check_limits(req, self.config.limits)
        spec = self.large.spec
        return GenerationRequest(
            prompt=req.prompt,
            width=req.width or spec.default_size,
            height=req.height or spec.default_size,
            steps=req.steps or spec.num_inference_steps,
            seed=self.config.seed if req.seed is None else req.seed,
        )

    def retrieve(self, prompt: str, tenant: str, timings: dict[str, float]):
        with _Timer(timings, "embed"):
            query = self.embedder.embed_text([prompt])[0]
        with _Timer(timings, "retrieve"):
            match = self.cache.query(query, namespaces=[tenant])
        return (self.k_table.decide(match.score if match else None), match)

    def generate(self, req: ImageRequest) -> EngineResult:
        gen_req = self.resolve(req)
        timings: dict[str, float] = {}
        record = DecisionRecord(
            request_id=uuid.uuid4().hex,
            hit=False,
            score=None,
            k=0,
            strength=1.0,
            model=LARGE,
            mode=self.config.mode.value,
            timings_s=timings,
        )
        if self.config.mode is SystemMode.VANILLA:
            self.large.check_request(gen_req)
            with _Timer(timings, "generate"):
                image = self.large.txt2img(gen_req)
            return EngineResult(image, record)

        self.large.check_request(gen_req)
        self.small.check_request(gen_req)
        decision, match = self.retrieve(req.prompt, req.tenant, timings)
        record.score = decision.score
        if decision.hit:
            record.hit, record.k, record.strength, record.model = True, decision.k, decision.strength, SMALL
            record.matched_entry = match.entry_id
            cached = Image.open(io.BytesIO(self.cache.get_png(match.entry_id)))
            with _Timer(timings, "generate"):
                image = self.small.img2img(gen_req, cached, decision.strength)
        else:
            with _Timer(timings, "generate"):
                image = self.large.txt2img(gen_req)
        self.admit(image, req, record)
        return EngineResult(image, record)

    def admit(self, image: Image.Image, req: ImageRequest, record: DecisionRecord) -> None:
        if not should_admit(self.config.cache.admission, from_large_model=record.model == LARGE, refined=record.hit):
            return
        with _Timer(record.timings_s, "admit"):
            key = self.embedder.embed_for_cache([image], [req.prompt])[0]
            entry = self.cache.add(
                png_bytes(image), key, prompt=req.prompt, tenant=req.tenant, source_model=record.model, k=record.k
            )
        record.admitted_entry = entry.id
