"""cache.warm (issue 13): the Serve app fills its cache from a prompt list with the large model before the router
serves, in modm mode (the image cache) and in nirvana mode (the latent cache), so the first request for a warmed
prompt is already a hit."""

import httpx
import pytest

from tools.local_cluster import wait_healthy

pytestmark = pytest.mark.ray

PROMPTS = ["a lighthouse on a rocky coast at night", "a bowl of ripe oranges on a wooden table"]
LIGHT = {
    name: {"num_cpus": 0.1}
    for name in ("Router", "Embedder", "CacheIndex", "LargeModel", "SmallModel", "Monitor", "LatentCache")
}


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("warm") / "prompts.tsv"
    path.write_text(
        "user_name\tprompt\n"
        + "".join(f"u{i}\t{p}\n" for i, p in enumerate(PROMPTS))
        + "u9\tnot warmed: beyond the limit\n",
        encoding="utf-8",
    )
    return path


def _deploy(name: str, system: dict, serve_app: str):
    from ray import serve

    from deployments.app import build_app

    serve.run(build_app({"system": system, "actor_options": LIGHT}), name=name, route_prefix=f"/{name}", blocking=False)
    url = f"{serve_app}/{name}"
    wait_healthy(url, timeout_s=240)
    return url


def test_modm_app_serves_a_warmed_prompt_as_a_hit(serve_app, tiny_zoo, tmp_path_factory, prompts_file):
    from ray import serve

    model = {"device": "cpu", "num_inference_steps": 4, "default_size": 64, "max_size": 64}
    system = {
        "mode": "modm",
        "models": {
            "large": {"source": str(tiny_zoo.large), **model},
            "small": {"source": str(tiny_zoo.small), "guidance_scale": 7.5, **model},
        },
        "embedder": {"kind": "minilm", "device": "cpu"},
        "policy": {"k_table": "minilm-text"},
        "cache": {
            "directory": str(tmp_path_factory.mktemp("warm-cache")),
            "warm": {"prompts": str(prompts_file), "limit": len(PROMPTS)},
        },
        "monitor": {"gpu_budget": 2, "min_small": 1, "window_s": 60},
    }
    url = _deploy("warm-modm", system, serve_app)
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            stats = client.get("/v1/stats").json()
            assert stats["warm"] == {"generated": 2, "already_cached": 0, "failed": 0, "namespace": "default"}, stats
            assert stats["cache"]["entries"] == 2
            response = client.post("/v1/images/generations", json={"prompt": PROMPTS[0], "size": "64x64"})
            assert response.status_code == 200, response.text
            assert response.json()["modm"]["hit"] is True, response.json()["modm"]
    finally:
        serve.delete("warm-modm")


def test_nirvana_app_prefills_its_latent_cache(serve_app, tiny_zoo, tmp_path_factory, prompts_file):
    from ray import serve

    steps = 30  # NIRVANA snapshots after steps 5..25
    system = {
        "mode": "nirvana",
        "models": {
            "large": {
                "source": str(tiny_zoo.large),
                "device": "cpu",
                "num_inference_steps": steps,
                "default_size": 64,
                "max_size": 64,
            }
        },
        "embedder": {"kind": "minilm", "device": "cpu"},
        "policy": {"total_steps": steps},
        "cache": {
            "directory": str(tmp_path_factory.mktemp("warm-nirvana")),
            "warm": {"prompts": str(prompts_file), "limit": 1},
        },
        "monitor": {"gpu_budget": 1, "min_small": 0},
        "limits": {"max_steps": steps},
    }
    url = _deploy("warm-nirvana", system, serve_app)
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            stats = client.get("/v1/stats").json()
            assert stats["warm"]["generated"] == 1 and stats["cache"]["prompts"] == 1, stats
            response = client.post("/v1/images/generations", json={"prompt": PROMPTS[0], "size": "64x64"})
            assert response.status_code == 200, response.text
            decision = response.json()["modm"]
            assert decision["hit"] is True and decision["k"] == 25, decision  # an exact repeat resumes at 25
    finally:
        serve.delete("warm-nirvana")


def test_a_missing_warm_file_is_refused_at_build_time(tiny_zoo, tmp_path):
    from deployments.app import build_app
    from modm.config import ConfigError

    system = {
        "mode": "modm",
        "models": {"large": {"source": str(tiny_zoo.large)}, "small": {"source": str(tiny_zoo.small)}},
        "embedder": {"kind": "minilm"},
        "cache": {"warm": {"prompts": str(tmp_path / "nope.txt")}},
    }
    with pytest.raises(ConfigError, match=r"cache\.warm\.prompts: .*does not exist"):
        build_app({"system": system, "check_resources": False})
