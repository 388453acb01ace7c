"""ReadWriteCache: lookups from reader replicas (CacheFollowers), admissions to the writer; a lost reader costs a
retry, two lost readers a fallback to the writer, never the lookup."""

from __future__ import annotations

import asyncio

import pytest
from cache_testkit import DIM, make_config, tiny_png, unit_vector

from modm.cache.follower import CacheFollower
from modm.serving.errors import ReplicaLost
from modm.serving.read_write_cache import ReadWriteCache
from modm.serving.services import CacheReaderService, ImageCacheService


class DyingReader:
    """A reader whose replica dies under the next `deaths` calls (as the handle proxy reports it)."""

    def __init__(self, reader: CacheReaderService, deaths: int):
        self.reader, self.deaths, self.calls = reader, deaths, 0

    def __getattr__(self, name: str):
        async def call(*args):
            self.calls += 1
            if self.deaths:
                self.deaths -= 1
                raise ReplicaLost("ActorDiedError")
            return await getattr(self.reader, name)(*args)

        return call


@pytest.fixture
def split(open_cache, cache_dir):
    writer = ImageCacheService(open_cache())
    follower = CacheFollower(make_config(cache_dir), DIM)
    yield writer, CacheReaderService(follower), follower
    follower.close()


async def admit(cache, seed: int, tenant: str = "alice") -> int:
    return await cache.add(tiny_png(seed), unit_vector(seed), f"prompt {seed}", tenant, "tiny-large", 0)


def test_reads_go_to_the_reader_and_admissions_to_the_writer(split):
    writer, reader, follower = split

    async def run():
        cache = ReadWriteCache(reader, writer)
        entry_id = await admit(cache, 5)
        assert writer.cache.entries()[0].id == entry_id and len(follower) == 0
        assert (await cache.lookup(unit_vector(5), ["alice"], 0.9)).match is None  # the reader has not refreshed
        follower.refresh()
        found = await cache.lookup(unit_vector(5), ["alice"], 0.9)
        assert found.match.entry_id == entry_id and found.png == tiny_png(5)
        assert await cache.png_in_scope(entry_id, ["alice"]) == tiny_png(5)
        assert await cache.png_in_scope(entry_id, ["bob"]) is None
        assert await cache.cached_prompts("alice") == ["prompt 5"]
        stats = await cache.stats()
        assert stats["admissions"] == 1 and stats["reader"]["entries"] == 1 and stats["reader"]["queries"] == 2
        assert stats["reader_retries"] == stats["writer_fallbacks"] == 0

    asyncio.run(run())


def test_a_lost_reader_is_retried_once_and_two_fall_back_to_the_writer(split):
    writer, reader, follower = split

    async def run():
        entry_id = await admit(writer, 3)
        follower.refresh()
        once = ReadWriteCache(DyingReader(reader, deaths=1), writer)
        assert (await once.lookup(unit_vector(3), ["alice"], 0.9)).png == tiny_png(3)
        assert once.counters == {"reader_retries": 1, "writer_fallbacks": 0} and once.reader.calls == 2
        twice = ReadWriteCache(DyingReader(reader, deaths=2), writer)
        assert (await twice.lookup(unit_vector(3), ["alice"], 0.9)).match.entry_id == entry_id
        assert twice.counters == {"reader_retries": 1, "writer_fallbacks": 1}
        assert writer.cache.stats().queries == 1  # the writer answered that one lookup
        gone = ReadWriteCache(DyingReader(reader, deaths=2), writer)
        assert (await gone.stats())["reader"] is None

    asyncio.run(run())


def test_a_readers_own_error_is_not_retried(split):
    writer, reader, _ = split
    cache = ReadWriteCache(reader, writer)
    with pytest.raises(ValueError, match="namespaces"):
        asyncio.run(cache.lookup(unit_vector(1), "alice", 0.9))  # a bare string: the caller's bug, raised once
    assert cache.counters == {"reader_retries": 0, "writer_fallbacks": 0}


def test_an_entry_evicted_after_the_readers_view_is_a_miss(open_cache, cache_dir):
    writer = ImageCacheService(open_cache(capacity=2))
    with CacheFollower(make_config(cache_dir), DIM) as follower:
        cache = ReadWriteCache(CacheReaderService(follower), writer)

        async def run():
            await admit(cache, 0)
            await admit(cache, 1)
            follower.refresh()
            await admit(cache, 2)  # evicts entry 0 and deletes its PNG; the reader still has it
            found = await cache.lookup(unit_vector(0), ["alice"], 0.9)
            assert found.match.entry_id == 0 and found.png is None

        asyncio.run(run())
