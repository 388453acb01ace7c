"""The pipeline's control logic with fake backends, in milliseconds: retries, backpressure, admission control,
timeouts, cancellation, the background-admission bound, the monitor's window counts, tenancy and request limits."""

import asyncio

import pytest
from serving_kit import Harness, make_config, run
from serving_fakes import FakeEmbedder, FakeMonitor, FakePool, lost, queue_full

from modm.roles import ModelRole
from modm.serving import ImageRequest
from modm.serving.errors import RequestRefused


def vanilla(**sections) -> Harness:
    return Harness(make_config("vanilla", **sections))


async def started(h: Harness) -> Harness:
    await h.pipeline.start()
    return h


def refusal(coro) -> RequestRefused:
    async def catch():
        try:
            await coro
        except RequestRefused as err:
            return err
        raise AssertionError("the request was served")

    return run(catch())


# ------------------------------------------------------------------------------------------------ replica loss
def test_a_lost_replica_is_retried_once_and_counted():
    h = vanilla()
    h.large.failures = [lost()]

    async def scenario():
        await started(h)
        served = await h.pipeline.generate(ImageRequest("x", seed=1))
        return served, await h.pipeline.stats()

    served, stats = run(scenario())
    assert len(h.large.calls) == 2 and served.images and stats["retries"] == 1 and stats["errors"] == 0


def test_a_replica_lost_twice_fails_the_request_with_503():
    h = vanilla()
    h.large.failures = [lost(), lost()]

    async def scenario():
        await started(h)
        err = None
        try:
            await h.pipeline.generate(ImageRequest("x"))
        except RequestRefused as caught:
            err = caught
        return err, await h.pipeline.stats()

    err, stats = run(scenario())
    assert err.status == 503 and err.kind == "server_error" and "large model failed" in err.message
    assert stats["errors"] == 1 and stats["retries"] == 1
    assert ("miss", "error", "large", 0) in h.metrics.finished


def test_a_model_error_is_not_retried():
    h = vanilla()
    h.large.failures = [RuntimeError("CUDA out of memory")]
    err = refusal(_generate(h, ImageRequest("x")))
    assert err.status == 503 and "RuntimeError" in err.message and len(h.large.calls) == 1


async def _generate(h: Harness, request: ImageRequest):
    await started(h)
    return await h.pipeline.generate(request)


# ------------------------------------------------------------------------------------------------ backpressure
def test_a_full_pool_queue_answers_503_with_retry_after():
    h = vanilla(models={"large": {"source": "fake/large", "profiled_latency_s": 4.0}})
    h.large.failures = [queue_full()]
    err = refusal(_generate(h, ImageRequest("x")))
    assert err.status == 503 and err.kind == "overloaded" and err.headers() == {"Retry-After": "4"}
    assert run(h.pipeline.stats())["rejected"] == 1


def test_admission_control_refuses_what_would_finish_after_the_bound():
    # 10 s per request, one replica, bound 25 s: two requests fit, the third would finish at 30 s.
    h = vanilla(
        models={"large": {"source": "fake/large", "profiled_latency_s": 10.0}},
        backpressure={"max_expected_latency_s": 25.0},
        monitor={"gpu_budget": 1, "min_small": 0},
    )

    async def scenario():
        await started(h)
        h.large.gate = asyncio.Event()
        first = asyncio.ensure_future(h.pipeline.generate(ImageRequest("a")))
        second = asyncio.ensure_future(h.pipeline.generate(ImageRequest("b")))
        await asyncio.sleep(0.01)
        refused = None
        try:
            await asyncio.wait_for(h.pipeline.generate(ImageRequest("c")), 1.0)
        except RequestRefused as err:
            refused = err
        h.large.gate.set()
        await asyncio.gather(first, second)
        return refused, await h.pipeline.stats()

    refused, stats = run(scenario())
    assert refused.status == 429 and refused.kind == "overloaded"
    assert refused.headers() == {"Retry-After": "10"} and "25s bound" in refused.message
    assert stats["requests"] == 2 and stats["rejected"] == 1 and stats["arrivals"] == 3
    assert len(h.large.calls) == 2


def test_admission_control_counts_the_batches_a_batching_pool_measured():
    # 10 s alone, but the replica runs batches of 4 in 12 s (0.06 s per image-step of 50 steps): within the 25 s
    # bound it serves two rounds of four, where one request at a time it would serve two requests.
    h = vanilla(
        models={"large": {"source": "fake/large", "profiled_latency_s": 10.0}},
        backpressure={"max_expected_latency_s": 25.0},
        monitor={"gpu_budget": 1, "min_small": 0},
    )
    h.large.costs = {"max_batch_size": 4, "mean_batch_size": 4.0, "seconds_per_image_step": {4: 0.06}, "passes": {}}

    async def scenario():
        await started(h)
        await h.pipeline.refresh_capacity()
        h.large.gate = asyncio.Event()
        admitted = [asyncio.ensure_future(h.pipeline.generate(ImageRequest(f"p{i}"))) for i in range(8)]
        await asyncio.sleep(0.01)
        refused = None
        try:
            await asyncio.wait_for(h.pipeline.generate(ImageRequest("one too many")), 1.0)
        except RequestRefused as err:
            refused = err
        h.large.gate.set()
        await asyncio.gather(*admitted)
        return refused

    refused = run(scenario())
    assert refused.status == 429 and refused.headers() == {"Retry-After": "12"}
    assert len(h.large.calls) == 8


def test_a_pool_that_does_not_batch_is_never_asked_for_its_capacity():
    """Its profile is its capacity; a poll would wait in the replica's queue behind a generation."""
    h = vanilla(models={"large": {"source": "fake/large", "profiled_latency_s": 1.0}})

    async def scenario():
        await started(h)
        await h.pipeline.generate(ImageRequest("x"))
        await asyncio.sleep(0.05)

    run(scenario())
    assert h.large.capacity_calls == 0 and h.pipeline.capacity[ModelRole.LARGE] is None


def test_a_pool_without_a_profile_is_profiled_then_admission_control_applies():
    h = vanilla(backpressure={"max_expected_latency_s": 1.5})
    h.large.profile_s = 1.0

    async def scenario():
        await started(h)
        await asyncio.sleep(0)  # the profiling task runs
        await asyncio.sleep(0)
        return h.pipeline.latency_s[ModelRole.LARGE]

    assert run(scenario()) == 1.0


# ------------------------------------------------------------------------------------------ timeouts, cancel
def test_a_request_past_its_timeout_gets_504_and_the_model_call_is_cancelled():
    h = vanilla(serving={"request_timeout_s": 0.05})

    async def scenario():
        await started(h)
        h.large.gate = asyncio.Event()  # never set
        try:
            await h.pipeline.generate(ImageRequest("x"))
        except RequestRefused as err:
            return err, await h.pipeline.stats()

    err, stats = run(scenario())
    assert err.status == 504 and err.kind == "timeout"
    assert h.large.cancelled == 1 and stats["errors"] == 1 and stats["queue_depths"]["large"] == 0
    assert ("none", "timeout", None, 0) in h.metrics.finished


def test_a_cancelled_request_cancels_its_model_calls_and_frees_its_slot():
    h = vanilla()

    async def scenario():
        await started(h)
        h.large.gate = asyncio.Event()
        task = asyncio.ensure_future(h.pipeline.generate(ImageRequest("x", n=2)))
        await asyncio.sleep(0.01)
        assert h.pipeline.in_flight[ModelRole.LARGE] == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await h.pipeline.stats()

    stats = run(scenario())
    assert h.large.cancelled == 2 and stats["queue_depths"]["large"] == 0 and stats["requests"] == 0


# --------------------------------------------------------------------------------------- background admission
def test_admissions_beyond_the_bound_are_dropped_not_queued(tmp_path):
    from modm.cache import ImageCache
    from modm.serving.services import ImageCacheService

    config = make_config("modm", tmp_path / "c", serving={"max_pending_admissions": 1})
    cache = ImageCacheService(ImageCache(config.cache, 8))
    release = asyncio.Event()
    real_add = cache.add

    async def slow_add(*args):
        await release.wait()
        return await real_add(*args)

    cache.add = slow_add
    h = Harness(config, embedder=FakeEmbedder(), cache=cache)

    async def scenario():
        await started(h)
        await h.pipeline.generate(ImageRequest("one"))
        await h.pipeline.generate(ImageRequest("two"))  # its admission finds the bound reached
        pending = (await h.pipeline.stats())["pending_admissions"]
        release.set()
        await h.pipeline.drain_admissions()
        return pending, await cache.stats()

    try:
        pending, cache_stats = run(scenario())
    finally:
        cache.cache.close()
    assert pending == 1 and cache_stats["entries"] == 1
    assert h.metrics.events["admission_dropped"] == 1


# ------------------------------------------------------------------------------------------------ the monitor
def test_arrivals_are_counted_even_when_rejected_and_the_monitor_allocation_is_used():
    monitor = FakeMonitor({"large": 2, "small": 0})
    h = Harness(make_config("vanilla", monitor={"gpu_budget": 2}), monitor=monitor)
    h.large.failures = [queue_full()]

    async def scenario():
        await started(h)
        for prompt in ("a", "b"):
            try:
                await h.pipeline.generate(ImageRequest(prompt))
            except RequestRefused:
                pass
        await h.pipeline.report_window()
        await h.pipeline.generate(ImageRequest("c"))
        await h.pipeline.report_window()
        return await h.pipeline.stats()

    stats = run(scenario())
    assert monitor.reports[0] == {"arrivals": 2, "decided": 2, "hits": 0, "k_counts": {}}
    assert monitor.reports[1]["arrivals"] == 1  # each report holds the counts since the previous one
    assert stats["allocation"] == {"large": 2, "small": 0}


def test_invalid_requests_are_not_counted_as_load():
    h = vanilla()

    async def scenario():
        await started(h)
        for bad in (
            ImageRequest("x", n=9),
            ImageRequest("x", width=65),
            ImageRequest("x", steps=10_000),
            ImageRequest(" "),
        ):
            with pytest.raises(RequestRefused) as err:
                await h.pipeline.generate(bad)
            assert err.value.status == 400, err.value.message
        return await h.pipeline.stats()

    stats = run(scenario())
    assert stats["arrivals"] == 0 and h.large.calls == []


@pytest.mark.parametrize(
    "request_, message",
    [
        (ImageRequest("x", n=9), "n=9 must be in [1, 4]"),
        (ImageRequest("x", width=65), "width=65 must be a positive multiple of 8"),
        (ImageRequest("x", height=4096), "height=4096 exceeds the largest size 1024"),
        (ImageRequest("x", steps=201), "steps=201 must be in [1, 200]"),
        (ImageRequest("x" * 5000), "characters; the limit is"),
    ],
)
def test_request_limits_name_the_field(request_, message):
    err = refusal(_generate(vanilla(), request_))
    assert err.status == 400 and message in err.message


def test_the_smallest_size_multiple_of_both_pools_applies(tmp_path):
    h = Harness(
        make_config("modm", tmp_path / "c"),
        embedder=FakeEmbedder(),
        cache=object(),
        pools={ModelRole.LARGE: FakePool(size_multiple=16), ModelRole.SMALL: FakePool(size_multiple=8)},
    )
    err = refusal(_generate(h, ImageRequest("x", width=72, height=64)))
    assert "multiple of 16 for model 'large'" in err.message


# -------------------------------------------------------------------------------------------------- tenancy
KEY = "sk-alice-0123456789"


def keyed() -> Harness:
    import hashlib

    sha = hashlib.sha256(KEY.encode()).hexdigest()
    return vanilla(auth={"api_keys": [{"sha256": sha, "tenant": "alice"}]})


def test_without_keys_the_header_names_the_tenant():
    pipeline = vanilla().pipeline
    assert pipeline.tenant(None, None) == "default"
    assert pipeline.tenant("bob", None) == "bob"
    with pytest.raises(RequestRefused) as err:
        pipeline.tenant("../etc", None)
    assert err.value.status == 400


def test_with_keys_the_key_names_the_tenant():
    pipeline = keyed().pipeline
    assert pipeline.tenant(None, f"Bearer {KEY}") == "alice"
    assert pipeline.tenant("alice", f"Bearer {KEY}") == "alice"
    for header, authorization, status in (
        (None, None, 401),
        (None, "Bearer wrong", 401),
        ("bob", f"Bearer {KEY}", 403),
    ):
        with pytest.raises(RequestRefused) as err:
            pipeline.tenant(header, authorization)
        assert err.value.status == status
    with pytest.raises(RequestRefused) as err:
        pipeline.authenticate(None)
    assert err.value.headers() == {"WWW-Authenticate": 'Bearer realm="modm"'}
