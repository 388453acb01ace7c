"""Session-wide test setup: offline, loopback-only, few threads; shared fixtures for the tiny model zoo."""

from __future__ import annotations

import os

# Set before anything imports huggingface_hub, transformers or ray.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from tools.local_cluster import free_port  # noqa: E402


# Test directories whose tiny models run on one torch thread: two threads per process oversubscribe the machine's two
# shared cores badly (a tiny 6-step generation goes from ~0.5 s to over 5 s, a tiny training step from ~0.06 s to over
# 1 s, under load).
ONE_TORCH_THREAD_DIRS = frozenset({"unit", "multistage", "quality"})


@pytest.fixture(autouse=True)
def single_torch_thread(request):
    if request.path.parent.name not in ONE_TORCH_THREAD_DIRS:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config, items):
    # Under `pytest -n 2 --dist loadgroup` (make test) every test on the session's Ray cluster runs in one worker,
    # so one cluster starts and its apps do not compete with a second cluster's; the other tests balance over both.
    # (Two groups on two clusters were tried: on 2 cores their replica start-ups, which are CPU-bound, starved each
    # other and a parallel rank's replacement missed its 180 s deadline.)
    for item in items:
        if "ray_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("ray"))
    if os.environ.get("MODM_RUN_GPU") == "1":
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; set MODM_RUN_GPU=1 on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """The tiny offline zoo, built once per test session (deterministic)."""
    from modm.models import build_tiny_zoo

    return build_tiny_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="session")
def minilm():
    from modm.config import EmbedderConfig
    from modm.embedding import build_embedder

    return build_embedder(EmbedderConfig(kind="minilm", device="cpu"))


@pytest.fixture(scope="session")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def http_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def ray_cluster(metrics_port):
    """One private local Ray cluster per test session (address="local": never one another process started).

    Replicas' and actors' stdout/stderr stay in the session's log files (`ray.init(...).address_info["session_dir"]`
    + /logs: worker-*.out/err, serve/replica_*.log) instead of streaming into pytest's output: log_to_driver=False."""
    import ray

    ray.init(
        address="local",
        num_cpus=12,
        include_dashboard=False,
        log_to_driver=False,
        _metrics_export_port=metrics_port,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
    )
    yield ray
    ray.shutdown()  # skip serve.shutdown(): it adds seconds and the cluster goes anyway
