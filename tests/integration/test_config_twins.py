"""Every shipped Serve config runs end to end as its miniature twin (modm.models.twins) through Serve and HTTP.

For each file in deployments/configs/ but local*.yaml (which have their own tests), the twin app is deployed in the
config's own mode and in the other two modes on the same models, and with the large model parallel on 2 gloo ranks
for every parallel method its denoiser takes (once per large model: configs that share it share those runs). It
gets a miss, a hit at every k of the table and, in NIRVANA mode, a resume at every k of NIRVANA's table. Hits at a
chosen k come through the cache deployments' public API: an entry whose key has the wanted cosine with the query
prompt's own embedding. A config whose twin cannot serve fails here.

A table config x {miss, hit@k, resume@k, parallel:<method>} -> pass/FAIL is printed at the end of the module.
"""

from __future__ import annotations

import base64
import contextlib
import io
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from modm.config import SystemMode, config_from_dict
from modm.policy.tables import NIRVANA_TABLE
from modm.models.architectures import architecture_for
from modm.models.twins import (
    TWIN_SIDE,
    build_twin,
    load_serve_app_args,
    mode_variant,
    twin_actor_options,
)
from modm.policy.tenancy import cache_scope

pytestmark = pytest.mark.ray

CONFIG_DIR = Path(__file__).resolve().parents[2] / "deployments" / "configs"
# local*.yaml serve models that are already miniature and local (the world, the tiny zoo): their own tests run them.
TWIN_CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.yaml") if not p.name.startswith("local"))
# modm/parallel wraps these denoisers (modm/parallel/pipeline.py); others have no parallel method.
PARALLEL_DENOISERS = ("UNet2DConditionModel", "SD3Transformer2DModel")
PARALLEL_METHODS = ("distrifusion", "naive_patch", "asyncdiff")
SIZE = f"{TWIN_SIDE}x{TWIN_SIDE}"
SEED = 11
DEPLOY_TIMEOUT_S = 240

RESULTS: dict[str, dict[str, str]] = {}
# Large model source -> the config whose twin ran the parallel apps for it: a parallel variant is built from the large
# model alone (mode_variant(..., VANILLA, parallel=...)), so configs sharing it would start the same apps again.
PARALLEL_COVERED_BY: dict[str, str] = {}


def _record(config: str, column: str, ok: bool, detail: str = "") -> None:
    RESULTS.setdefault(config, {})[column] = "pass" if ok else f"FAIL {detail}"[:80]


@pytest.fixture(scope="module", autouse=True)
def twin_table(request):
    yield
    lines = ["", "config twins (config x combination -> result):"]
    for config, row in RESULTS.items():
        for column, result in row.items():
            lines.append(f"  {config:24s} {column:32s} {result}")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n".join(lines), flush=True)


@pytest.fixture(scope="session")
def twin_root(tmp_path_factory):
    return tmp_path_factory.mktemp("twins")


def _app_args(system, actor_options) -> dict:
    return {"system": system.model_dump(mode="json"), "actor_options": actor_options}


def _one_large(system):
    """vanilla/nirvana run gpu_budget large replicas: one is enough here, and one Router and Ingress (the own-mode
    twin runs the shipped config's Routers and Ingresses; tests/integration/test_routers.py tests several)."""
    data = system.model_dump(mode="json")
    data["monitor"].update(gpu_budget=1, min_small=0)
    data["serving"].update(router_replicas=1, ingress_replicas=1)
    return config_from_dict(data, "twin")


def _wait_running(names: list[str], timeout_s: float) -> dict[str, str]:
    """Wait until every app is RUNNING or failed; returns name -> '' (running) or the failure message."""
    from ray import serve

    deadline, state = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        apps = serve.status().applications
        state = {n: apps[n].status.value if n in apps else "MISSING" for n in names}
        if all(s in ("RUNNING", "DEPLOY_FAILED", "UNHEALTHY") for s in state.values()):
            break
        time.sleep(1.0)
    apps = serve.status().applications
    return {
        n: "" if state.get(n) == "RUNNING" else f"{state.get(n)}: {apps[n].message if n in apps else ''}"[:400]
        for n in names
    }


@pytest.fixture(scope="module", params=TWIN_CONFIGS, ids=lambda p: p.name)
def twin_apps(request, serve_http, twin_root, tmp_path_factory):
    """All apps of one config's twin, deployed at once: own mode, the other modes, and each parallel method."""
    from ray import serve
    from ray.serve.api import RunTarget

    from deployments.app import build_app

    path: Path = request.param
    args = load_serve_app_args(path)
    shipped = config_from_dict(args["system"], f"{path.name}: args.system")
    started = time.perf_counter()
    twin = build_twin(shipped, twin_root, cache_dir=tmp_path_factory.mktemp("cache"))
    print(f"\n{path.name}: twins built in {time.perf_counter() - started:.1f}s\n{twin.describe()}")
    options, option_overrides = twin_actor_options(args.get("actor_options", {}))
    for field, (old, new) in option_overrides.items():
        print(f"  {field}: {old!r} -> {new!r}")
    stem = path.stem
    variants = {"own": twin.config}
    for mode in SystemMode:
        if mode is not shipped.mode:
            variant = mode_variant(twin.config, mode)
            if mode is SystemMode.NIRVANA:
                data = variant.model_dump(mode="json")
                data["cache"]["directory"] = str(tmp_path_factory.mktemp("nirvana-cache"))
                variant = config_from_dict(data, "twin")
            variants[mode.value] = _one_large(variant)
    denoiser = architecture_for(shipped.models.large.source).denoiser.class_name
    methods = PARALLEL_METHODS if denoiser in PARALLEL_DENOISERS else ()
    covered_by = PARALLEL_COVERED_BY.setdefault(shipped.models.large.source, path.name)
    for method in methods if covered_by == path.name else ():
        variants[f"parallel:{method}"] = _one_large(
            mode_variant(twin.config, SystemMode.VANILLA, parallel={"method": method, "world_size": 2})
        )
    names, targets = {}, []
    for key, system in variants.items():
        if key.startswith("parallel:"):
            continue  # one at a time, in its test: each group reserves 2 more CPUs of the 12-CPU test cluster
        name = f"twin-{stem}-{key.replace(':', '-')}"
        try:
            targets.append(RunTarget(build_app(_app_args(system, options)), name=name, route_prefix=f"/{name}"))
            names[key] = name
        except ValueError as err:  # a build-time refusal (ConfigError is a ValueError) is a result too
            names[key] = None
            _record(path.name, f"deploy:{key}", False, f"{type(err).__name__}: {err}")
    started = time.perf_counter()
    serve.run_many(targets, wait_for_applications_running=False)  # all at once; readiness polled below
    failures = _wait_running([n for n in names.values() if n], DEPLOY_TIMEOUT_S)
    print(
        f"{path.name}: {len(names)} apps up in {time.perf_counter() - started:.1f}s; failures: "
        f"{ {k: v for k, v in failures.items() if v} }"
    )
    yield {
        "config": path.name,
        "options": options,
        "shipped": shipped,
        "twin": twin,
        "variants": variants,
        "names": names,
        "failures": failures,
        "base": serve_http,
        "parallel_methods": methods,
        "parallel_covered_by": covered_by,
        "denoiser": denoiser,
    }
    for name in names.values():
        if name:
            serve.delete(name, _blocking=False)
    for key, name in names.items():
        if key.startswith("parallel:") and name:  # a parallel test that stopped before its own delete
            serve.delete(name, _blocking=False)


def _client(apps, key: str) -> httpx.Client:
    name = apps["names"].get(key)
    if name is None:
        pytest.fail(f"{apps['config']}: the {key} twin app was refused at build time")
    if apps["failures"].get(name):
        _record(apps["config"], key, False, apps["failures"][name])
        pytest.fail(f"{apps['config']}: the {key} twin app did not start: {apps['failures'][name]}")
    return httpx.Client(base_url=f"{apps['base']}/{name}", timeout=300)


def _post(client: httpx.Client, prompt: str, tenant: str) -> httpx.Response:
    return client.post(
        "/v1/images/generations", json={"prompt": prompt, "size": SIZE, "seed": SEED}, headers={"X-Tenant-Id": tenant}
    )


def _generate(client: httpx.Client, prompt: str, tenant: str) -> dict:
    response = _post(client, prompt, tenant)
    assert response.status_code == 200, f"{response.status_code}: {response.text[:500]}"
    return response.json()


def _raise_with_cause(response: httpx.Response, direct_call) -> None:
    """Fail with the HTTP answer and the model replica's own error for the same call."""
    try:
        direct_call()
        cause = "the direct call to the replica succeeded"
    except Exception as err:  # noqa: BLE001 - whatever the replica raised is the diagnosis
        cause = str(err).strip().splitlines()[-1]
    raise AssertionError(f"{response.status_code} ({cause[:200]}): {response.text[:200]}")


def _handle(apps, key: str, deployment: str):
    from ray import serve

    return serve.get_deployment_handle(deployment, app_name=apps["names"][key])


def _key_with_score(query: np.ndarray, score: float, salt: int) -> np.ndarray:
    """A unit vector whose cosine with the unit vector `query` is `score`."""
    q = np.asarray(query, np.float64)
    q /= np.linalg.norm(q)
    other = np.random.default_rng(salt).standard_normal(q.shape)
    other -= other.dot(q) * q
    other /= np.linalg.norm(other)
    return (score * q + np.sqrt(1.0 - score * score) * other).astype(np.float32)


def _pixels(b64: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.int16)


def _band_scores(rules, strict: bool) -> list[tuple[int, float]]:
    """(k, a score inside the band of each rule): just above its threshold, below the next one up."""
    out = []
    for i, rule in enumerate(rules):
        upper = rules[i - 1].min_score if i else 1.0
        out.append((rule.k, min(rule.min_score + (0.004 if not strict else 0.01), (rule.min_score + upper) / 2)))
    return out


def test_own_mode_serves_a_miss_and_a_hit_at_every_k(twin_apps):
    apps, config = twin_apps, twin_apps["config"]
    system = apps["variants"]["own"]
    if system.mode is not SystemMode.MODM:
        pytest.skip(f"{config} runs mode {system.mode.value}; its own mode is covered by the mode tests")
    with _client(apps, "own") as client:
        prompt = "a lighthouse on a cliff at dawn, oil painting"
        try:
            miss = _generate(client, prompt, "twin-miss")
            assert miss["modm"]["hit"] is False and miss["modm"]["model"] == "large", miss["modm"]
            _record(config, "miss", True)
        except AssertionError as err:
            _record(config, "miss", False, str(err))
            raise
        png = base64.b64decode(miss["data"][0]["b64_json"])
        query = _handle(apps, "own", "Embedder").embed_text.remote(prompt).result()
        cache = _handle(apps, "own", "CacheIndex")
        failures = []
        for k, score in _band_scores(system.policy.k_table, strict=False):
            tenant = f"twin-k{k}"
            key = _key_with_score(query, score, salt=k)
            cache.add.remote(png, key, prompt, cache_scope(tenant, ()).write, "large", 0).result()
            try:
                response = _post(client, prompt, tenant)
                if response.status_code != 200:  # the router answers 503; ask the model replica for its reason
                    _raise_with_cause(
                        response,
                        lambda k=k: (
                            _handle(apps, "own", "SmallModel")
                            .refine.remote(
                                prompt,
                                png,
                                1 - k / system.policy.total_steps,
                                TWIN_SIDE,
                                TWIN_SIDE,
                                system.models.small.num_inference_steps,
                                SEED,
                            )
                            .result()
                        ),
                    )
                hit = response.json()["modm"]
                assert hit["hit"] is True and hit["k"] == k, hit
                assert abs(hit["strength"] - (1 - k / system.policy.total_steps)) < 1e-9, hit
                assert hit["model"] == ("small" if system.monitor.mode.value == "throughput" else hit["model"])
                _record(config, f"hit@k={k}", True)
            except AssertionError as err:
                _record(config, f"hit@k={k}", False, str(err))
                failures.append(f"k={k}: {err}")
        assert not failures, failures


def test_vanilla_mode_serves_a_miss(twin_apps):
    apps, config = twin_apps, twin_apps["config"]
    key = "own" if apps["variants"]["own"].mode is SystemMode.VANILLA else "vanilla"
    with _client(apps, key) as client:
        try:
            out = _generate(client, "a red bicycle leaning on a wall", "twin-vanilla")["modm"]
            assert out["hit"] is False and out["model"] == "large" and out["mode"] == "vanilla", out
            _record(config, "vanilla:miss", True)
        except AssertionError as err:
            _record(config, "vanilla:miss", False, str(err))
            raise


def test_nirvana_mode_resumes_at_every_k(twin_apps):
    """A miss, then for every k of NIRVANA's table a hit that resumes the large model from the miss's own latents
    after k steps (seeded through LatentCache.add), which must reproduce the uninterrupted image."""
    apps, config = twin_apps, twin_apps["config"]
    key = "own" if apps["variants"]["own"].mode is SystemMode.NIRVANA else "nirvana"
    system = apps["variants"][key]
    prompt = "a wooden cabin in a snowy forest"
    with _client(apps, key) as client:
        try:
            miss = _generate(client, prompt, "twin-nirvana-miss")["modm"]
            assert miss["hit"] is False and miss["mode"] == "nirvana", miss
            _record(config, "nirvana:miss", True)
        except AssertionError as err:
            _record(config, "nirvana:miss", False, str(err))
            raise
        steps = system.models.large.num_inference_steps
        png, latents = (
            _handle(apps, key, "LargeModel")
            .generate_with_snapshots.remote(prompt, TWIN_SIDE, TWIN_SIDE, steps, SEED)
            .result()
        )
        full = _pixels(base64.b64encode(png).decode())
        query = _handle(apps, key, "Embedder").embed_text.remote(prompt).result()
        latent_cache = _handle(apps, key, "LatentCache")
        failures = []
        for k, score in _band_scores(NIRVANA_TABLE, strict=True):
            tenant = f"twin-nk{k}"
            namespace = f"{cache_scope(tenant, ()).write}/{SIZE}/{steps}"
            latent_cache.add.remote(_key_with_score(query, score, salt=k), namespace, latents).result()
            try:
                response = _post(client, prompt, tenant)
                if response.status_code != 200:
                    _raise_with_cause(
                        response,
                        lambda k=k: (
                            _handle(apps, key, "LargeModel")
                            .resume.remote(prompt, latents[k], k, TWIN_SIDE, TWIN_SIDE, steps, SEED)
                            .result()
                        ),
                    )
                out = response.json()
                assert out["modm"]["hit"] is True and out["modm"]["k"] == k, out["modm"]
                diff = int(np.abs(_pixels(out["data"][0]["b64_json"]) - full).max())
                assert diff <= 1, f"resume after {k} steps differs from the full run by {diff} grey levels"
                _record(config, f"nirvana:resume@k={k}", True)
            except AssertionError as err:
                _record(config, f"nirvana:resume@k={k}", False, str(err))
                failures.append(f"k={k}: {err}")
        assert not failures, failures


@pytest.mark.parametrize("method", PARALLEL_METHODS)
def test_parallel_large_model_serves_a_miss(twin_apps, method):
    apps, config = twin_apps, twin_apps["config"]
    from ray import serve
    from ray.serve.api import RunTarget

    from deployments.app import build_app

    if method not in apps["parallel_methods"]:
        # The bad-input rule: a model that cannot run the method is refused when the app is built.
        system = _one_large(
            mode_variant(apps["twin"].config, SystemMode.VANILLA, parallel={"method": method, "world_size": 2})
        )
        column = f"parallel:{method} refused"
        try:
            build_app(_app_args(system, apps["options"]))
        except ValueError as err:
            assert "parallel" in str(err), err
            _record(config, column, True)
            return
        _record(config, column, False, f"{apps['denoiser']} takes no {method}, yet the app was built")
        pytest.fail(
            f"{config}: {apps['denoiser']} cannot run {method} (modm/parallel wraps "
            f"{', '.join(PARALLEL_DENOISERS)}), yet build_app accepted models.large.parallel"
        )

    key = f"parallel:{method}"
    if apps["parallel_covered_by"] != config:
        RESULTS.setdefault(config, {})[key] = f"same large model as {apps['parallel_covered_by']}"
        pytest.skip(f"{config}'s large model is {apps['parallel_covered_by']}'s, whose twin ran {method}")
    name = f"twin-{Path(config).stem}-parallel-{method}"
    try:
        app = build_app(_app_args(apps["variants"][key], apps["options"]))
    except ValueError as err:
        _record(config, key, False, f"refused at build time: {err}")
        raise
    serve.run_many([RunTarget(app, name=name, route_prefix=f"/{name}")], wait_for_applications_running=False)
    apps["names"][key] = name
    try:
        apps["failures"].update(_wait_running([name], DEPLOY_TIMEOUT_S))
        with _client(apps, key) as client:
            try:
                out = _generate(client, "a paper boat on a puddle", "twin-parallel")["modm"]
                assert out["hit"] is False and out["model"] == "large", out
                _record(config, key, True)
            except AssertionError as err:
                _record(config, key, False, str(err))
                raise
    finally:
        serve.delete(name)
        apps["names"][key] = None  # deleted already
