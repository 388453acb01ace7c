import pytest
from serving_fakes import FakeEmbedder, FakeMonitor
from serving_kit import Harness, make_config

from modm.cache import ImageCache
from modm.serving.services import ImageCacheService


@pytest.fixture
def modm_harness(tmp_path):
    """MoDM over a real ImageCache (dim 8) and a fake embedder; call it with the embedder's prompt vectors."""
    opened = []

    def build(vectors=None, **sections):
        config = make_config("modm", tmp_path / f"cache{len(opened)}", **sections)
        cache = ImageCache(config.cache, 8)
        opened.append(cache)
        return Harness(config, embedder=FakeEmbedder(vectors), cache=ImageCacheService(cache), monitor=FakeMonitor())

    yield build
    for cache in opened:
        cache.close()
