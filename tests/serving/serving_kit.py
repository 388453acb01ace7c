"""The pipeline harness the serving tests share: a config maker and a pipeline over fakes."""

import asyncio
from pathlib import Path

from serving_fakes import FakePool, RecordingMetrics

from modm.config import config_from_dict
from modm.roles import ModelRole
from modm.serving import Backends, RequestPipeline


def make_config(mode: str = "modm", cache_dir: Path | None = None, **sections):
    data = {
        "mode": mode,
        "models": {"large": {"source": "fake/large", "num_inference_steps": 50}},
        "embedder": {"kind": "minilm", "device": "cpu"},
        **sections,
        "cache": {"directory": str(cache_dir or "unused"), "hnsw_min_entries": 10_000, **sections.get("cache", {})},
    }
    if mode == "modm":
        data["models"]["small"] = {"source": "fake/small", "num_inference_steps": 50}
        data.setdefault("policy", {"k_table": "minilm-text"})
    return config_from_dict(data, "test")


class Harness:
    """A pipeline over fakes (and a real on-disk image cache in MoDM mode), driven on one event loop."""

    def __init__(self, config, *, embedder=None, cache=None, monitor=None, pools=None, load_board=None):
        self.config = config
        self.pools = pools or {ModelRole.LARGE: FakePool()}
        if config.mode.value == "modm" and ModelRole.SMALL not in self.pools:
            self.pools[ModelRole.SMALL] = FakePool()
        self.embedder = embedder
        self.cache = cache
        self.monitor = monitor
        self.metrics = RecordingMetrics()
        self.pipeline = RequestPipeline(
            config,
            Backends(models=self.pools, embedder=embedder, cache=cache, monitor=monitor, load_board=load_board),
            metrics=self.metrics,
        )

    @property
    def large(self) -> FakePool:
        return self.pools[ModelRole.LARGE]

    @property
    def small(self) -> FakePool:
        return self.pools[ModelRole.SMALL]


def run(coro):
    return asyncio.run(coro)
