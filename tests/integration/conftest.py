"""One local Ray cluster and one Serve app per test session, reached through real HTTP on loopback."""

import time

import httpx
import pytest

from tools.local_cluster import wait_healthy

pytestmark = pytest.mark.ray


# The session app's model replicas batch, so every HTTP test also goes through both batching engines.
BATCHING = {"engine": "request", "max_batch_size": 4, "max_wait_ms": 20}
STEP_BATCHING = {**BATCHING, "engine": "step"}


def system_config(zoo, cache_dir) -> dict:
    model = {"device": "cpu", "num_inference_steps": 4, "default_size": 64, "max_size": 128}
    return {
        "mode": "modm",
        "models": {
            "large": {"source": str(zoo.large), **model, "batching": BATCHING},
            "small": {"source": str(zoo.small), "guidance_scale": 7.5, **model, "batching": STEP_BATCHING},
        },
        "embedder": {"kind": "minilm", "device": "cpu"},
        "cache": {"directory": str(cache_dir), "admission": "cache-all"},
        "policy": {"k_table": "minilm-text"},
        "monitor": {"mode": "throughput", "gpu_budget": 3, "window_s": 2.0, "min_small": 1},
        "limits": {"max_prompt_chars": 500, "max_steps": 8, "max_images": 2},
        "serving": {"request_timeout_s": 60, "stats_report_interval_s": 0.5},
    }


@pytest.fixture(scope="session")
def serve_http(ray_cluster, http_port) -> str:
    """Serve's HTTP proxy on the session cluster, without any app: the tests that deploy only their own apps use
    this, not `serve_app`, so they run on a second cluster (tests/conftest.py) without starting the session app."""
    from ray import serve

    serve.start(http_options={"host": "127.0.0.1", "port": http_port, "request_timeout_s": 300})
    return f"http://127.0.0.1:{http_port}"


@pytest.fixture(scope="session")
def serve_app(serve_http, tiny_zoo, tmp_path_factory):
    from ray import serve

    from deployments.app import build_app

    app = build_app({"system": system_config(tiny_zoo, tmp_path_factory.mktemp("cache"))})
    started = time.perf_counter()
    serve.run(app, name="modm", route_prefix="/", blocking=False)
    url = serve_http
    try:
        wait_healthy(url, timeout_s=240)
    except TimeoutError as err:
        pytest.fail(str(err))
    print(f"\nServe app ready in {time.perf_counter() - started:.1f}s")
    return url


@pytest.fixture(scope="session")
def client(serve_app):
    with httpx.Client(base_url=serve_app, timeout=120) as c:
        yield c


PARALLEL_APP = "modm-parallel"


@pytest.fixture(scope="session")
def parallel_app(serve_app, http_port, tiny_zoo):
    """A vanilla app whose LargeModel is one DistriFusion group of 2 gloo ranks (synchronous, so it matches one
    device), shared by the parallel tests: starting a group costs tens of seconds on 2 cores. Its replicas check
    health every second and stop within 2 s, so a test that kills a rank sees the replacement quickly."""
    from ray import serve

    import deployments.app
    from deployments.app import build_app

    large = {
        "source": str(tiny_zoo.large),
        "device": "cpu",
        "num_inference_steps": 3,
        "default_size": 64,
        "max_size": 128,
        "parallel": {"method": "distrifusion", "world_size": 2, "always_synchronous": True},
    }
    system = {
        "mode": "vanilla",
        "models": {"large": large},
        "monitor": {"gpu_budget": 1, "min_small": 0},
        "serving": {"request_timeout_s": 45},
    }
    defaults = dict(deployments.app.DEFAULT_DEPLOYMENT_OPTIONS)
    graceful_shutdown_s = deployments.app.graceful_shutdown_s
    deployments.app.DEFAULT_DEPLOYMENT_OPTIONS.update(health_check_period_s=1.0, graceful_shutdown_timeout_s=2.0)
    deployments.app.graceful_shutdown_s = lambda spec, system: 2.0  # model replicas: normally a generation's length
    try:
        app = build_app({"system": system, "actor_options": {"LargeModel": {"num_cpus": 0.1}}})
    finally:
        deployments.app.DEFAULT_DEPLOYMENT_OPTIONS.clear()
        deployments.app.DEFAULT_DEPLOYMENT_OPTIONS.update(defaults)
        deployments.app.graceful_shutdown_s = graceful_shutdown_s
    serve.run(app, name=PARALLEL_APP, route_prefix="/parallel", blocking=False)
    url = f"{serve_app}/parallel"
    wait_healthy(url, timeout_s=240)
    yield {"url": url, "app": PARALLEL_APP, "large": large}
    serve.delete(PARALLEL_APP)
