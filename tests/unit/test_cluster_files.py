"""The cluster deployment files (cluster/, Dockerfile) against Ray's own schemas and the Serve configs we ship.

No cluster is needed: Ray's autoscaler schema and Serve's config schema validate the files offline, and the KubeRay
manifests are re-rendered to prove they still embed the Serve configs they were generated from.
"""

import copy
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath

import pytest
import yaml

from tools import kuberay
from deployments.app import AppArgs, required_resources
from modm.config import load_config

ROOT = Path(__file__).parents[2]
CLUSTER = ROOT / "cluster"
GPU_SERVE_CONFIGS = sorted((ROOT / "deployments" / "configs").glob("gpu-*.yaml"))
MANIFESTS = sorted(CLUSTER.glob("rayservice-*.yaml"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def read_yaml(path: Path):
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def peak_needs(serve_config: Path) -> dict[str, float]:
    """The app builder's own arithmetic: N model replicas of the widest model plus one of everything else."""
    args = AppArgs.model_validate(read_yaml(serve_config)["applications"][0]["args"])
    return required_resources(load_config(serve_config), args)


def ray_pin() -> str:
    (pin,) = [dep.split("==")[1] for dep in PYPROJECT["project"]["dependencies"] if dep.startswith("ray[")]
    return pin


# ---------------------------------------------------------------------------------------------- ray up cluster


@pytest.fixture(scope="module")
def ray_up():
    """The cluster YAML as `ray up` sees it: merged with the provider's defaults."""
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(read_yaml(CLUSTER / "ray-cluster-aws.yaml"))


def test_ray_up_config_passes_rays_autoscaler_schema(ray_up):
    import jsonschema
    from ray.autoscaler._private.util import validate_config

    validate_config(ray_up)
    wrong = copy.deepcopy(ray_up)
    wrong["available_node_types"]["gpu_worker"]["num_gpus"] = 4  # the schema's key is resources: {GPU: 4}
    with pytest.raises(jsonschema.ValidationError, match="num_gpus"):
        validate_config(wrong)


def test_ray_up_head_is_cpu_only_and_workers_bring_gpus(ray_up):
    types = ray_up["available_node_types"]
    head = types.pop(ray_up["head_node_type"])
    assert head["resources"].get("GPU", 0) == 0
    assert types and all(t["resources"]["GPU"] > 0 and t["min_workers"] == t["max_workers"] for t in types.values())


@pytest.mark.parametrize("serve_config", GPU_SERVE_CONFIGS, ids=lambda p: p.stem)
def test_ray_up_cluster_holds_each_gpu_serve_config(ray_up, serve_config):
    types = ray_up["available_node_types"]
    have: dict[str, float] = {}
    for name, node_type in types.items():
        count = 1 if name == ray_up["head_node_type"] else node_type["max_workers"]
        for resource, amount in node_type["resources"].items():
            have[resource] = have.get(resource, 0) + amount * count
    for resource, amount in peak_needs(serve_config).items():
        assert have.get(resource, 0) >= amount, (resource, amount, have)
    # The cache and the weights live on the volume that every node mounts into the Ray container.
    mounts = [option.split()[1].split(":") for option in ray_up["docker"]["run_options"] if option.startswith("-v ")]
    shared = [PurePosixPath(container) for host, container in mounts]
    cache = PurePosixPath(load_config(serve_config).cache.directory)
    assert any(volume in cache.parents for volume in shared)
    hf_home = [o.split("=", 1)[1] for o in ray_up["docker"]["run_options"] if o.startswith("-e HF_HOME=")]
    assert len(hf_home) == 1 and any(volume in PurePosixPath(hf_home[0]).parents for volume in shared)


def test_ray_up_starts_ray_with_dashboard_and_metrics_export(ray_up):
    head = " ".join(ray_up["head_start_ray_commands"])
    assert "--head" in head and "--dashboard-host=0.0.0.0" in head
    for commands in (ray_up["head_start_ray_commands"], ray_up["worker_start_ray_commands"]):
        assert f"--metrics-export-port={kuberay.METRICS_PORT}" in " ".join(commands)


# ---------------------------------------------------------------------------------------------- images


def test_images_use_the_pinned_ray_and_install_the_gpu_extra(ray_up):
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    bases = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("FROM ")]
    assert bases == [f"rayproject/ray:{ray_pin()}-py311-gpu"]
    assert ray_up["docker"]["image"] == bases[0]
    # One install script for both: the Dockerfile and every `ray up` node install the `gpu` extra the same way.
    assert "RUN sh cluster/install-gpu.sh ." in dockerfile
    assert ray_up["setup_commands"][0] == "sh /home/ray/modm/cluster/install-gpu.sh /home/ray/modm"
    script = (CLUSTER / "install-gpu.sh").read_text(encoding="utf-8")
    assert 'pip install --no-cache-dir "${src}[gpu]"' in script
    assert "gpu" in PYPROJECT["project"]["optional-dependencies"]


def test_dockerfile_copies_every_package_and_dockerignore_keeps_local_state_out():
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    copied = {line.split()[2] for line in dockerfile.splitlines() if line.startswith("COPY ")}
    packages = {pattern.rstrip("*") for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied and PYPROJECT["project"]["readme"] in dockerfile
    ignored = {
        line
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    }
    assert {".venv", ".modm", "artifacts", "**/__pycache__", ".git"} <= ignored
    assert not ignored & (copied | packages)


# ---------------------------------------------------------------------------------------------- KubeRay


def manifest_source(manifest: Path) -> tuple[list[str], Path]:
    """The generator's argv from the manifest's first line, and the Serve config it names."""
    first = manifest.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith(kuberay.GENERATED_BY), f"{manifest.name} was not written by tools.kuberay"
    argv = shlex.split(first.removeprefix(kuberay.GENERATED_BY))
    return argv, ROOT / argv[0]


def pod_specs(doc: dict) -> list[dict]:
    cluster = doc["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]


def test_every_gpu_serve_config_has_a_committed_manifest():
    assert [m.name for m in MANIFESTS] == sorted(
        f"rayservice-{p.stem.removeprefix('gpu-')}.yaml" for p in GPU_SERVE_CONFIGS
    )
    assert sorted(manifest_source(m)[1] for m in MANIFESTS) == GPU_SERVE_CONFIGS


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_committed_manifest_is_what_the_generator_renders_now(manifest, monkeypatch, capsys):
    argv, _ = manifest_source(manifest)
    monkeypatch.chdir(ROOT)
    assert kuberay.main(argv) == 0
    assert capsys.readouterr().out == manifest.read_text(encoding="utf-8"), (
        f"stale: python -m tools.kuberay {shlex.join(argv)} > {manifest.relative_to(ROOT)}"
    )


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_manifest_serve_config_passes_serves_schema_and_is_the_shipped_config(manifest):
    from ray.serve.schema import ServeDeploySchema

    doc = read_yaml(manifest)
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayService")
    assert doc["spec"]["rayClusterConfig"]["rayVersion"] == ray_pin()
    serve_config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_config)
    # The one change: the builder's resource check is off (the config may arrive before the GPU pods join).
    assert serve_config["applications"][0]["args"].pop("check_resources") is False
    assert serve_config == read_yaml(manifest_source(manifest)[1])


def test_serve_schema_catches_a_broken_serve_config():
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    serve_config = read_yaml(GPU_SERVE_CONFIGS[0])
    serve_config["applications"][0]["import_path"] = "build_app"  # no module
    with pytest.raises(ValidationError, match="import_path"):
        ServeDeploySchema.model_validate(serve_config)


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_manifest_gpu_group_covers_the_model_replicas(manifest):
    doc = read_yaml(manifest)
    cluster = doc["spec"]["rayClusterConfig"]
    (group,) = cluster["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"]
    (worker,) = group["template"]["spec"]["containers"]
    gpus = group["replicas"] * int(worker["resources"]["limits"]["nvidia.com/gpu"])
    cpus = group["replicas"] * int(worker["resources"]["limits"]["cpu"])
    serve_config = manifest_source(manifest)[1]
    system = load_config(serve_config)
    widest = max(spec.parallel.world_size for spec in (system.models.large, system.models.small) if spec)
    assert gpus >= system.monitor.gpu_budget * widest
    # The head advertises no CPUs, so the workers must also hold the light deployments (router, cache, monitor).
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    need = peak_needs(serve_config)
    assert gpus >= need["GPU"] and cpus >= need["CPU"]


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_every_pod_mounts_the_shared_claim_over_the_cache_and_exports_metrics(manifest):
    doc = read_yaml(manifest)
    claim = read_yaml(CLUSTER / "modm-cache-pvc.yaml")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    cache = PurePosixPath(load_config(manifest_source(manifest)[1]).cache.directory)
    podmonitor = read_yaml(CLUSTER / "podmonitor.yaml")["spec"]
    (endpoint,) = podmonitor["podMetricsEndpoints"]
    for spec in pod_specs(doc):
        claims = {
            v["name"]
            for v in spec["volumes"]
            if v.get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]
        }
        (container,) = spec["containers"]
        mounts = [PurePosixPath(m["mountPath"]) for m in container["volumeMounts"] if m["name"] in claims]
        assert any(mount in cache.parents for mount in mounts)
        env = {e["name"]: e for e in container["env"]}
        assert any(mount in PurePosixPath(env["HF_HOME"]["value"]).parents for mount in mounts)
        assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports[endpoint["port"]] == kuberay.METRICS_PORT
    assert podmonitor["selector"]["matchLabels"] == {"ray.io/is-ray-node": "yes"}


def gpu_serve_config_with(field: str, value) -> dict:
    serve_config = read_yaml(GPU_SERVE_CONFIGS[0])
    node = serve_config["applications"][0]["args"]["system"]
    *parents, leaf = field.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    return serve_config


def options(**overrides) -> kuberay.RayServiceOptions:
    return kuberay.RayServiceOptions(name="modm", image="modm:test", ray_version=ray_pin(), **overrides)


@pytest.mark.parametrize(
    "field, value",
    [
        ("cache.directory", ".modm/cache"),  # relative: the pod's working directory, lost with the pod
        ("cache.directory", "/data/modm/cache"),  # absolute, but on the pod's own disk
        ("cache.directory", "/mnt/modm"),  # the mount point itself, not a directory on the volume
        ("models.large.source", "/models/sd35"),
        ("models.small.source", "./zoo/small"),
        ("embedder.model", "local-dir:/opt/clip"),
    ],
)
def test_generator_refuses_paths_off_the_shared_volume(field, value):
    with pytest.raises(ValueError, match=re.escape(repr(value.removeprefix("local-dir:")))):
        kuberay.render_rayservice(gpu_serve_config_with(field, value), options())


def test_generator_accepts_local_weights_on_the_shared_volume():
    doc = kuberay.render_rayservice(gpu_serve_config_with("models.large.source", "/mnt/modm/weights/sd35"), options())
    assert "source: /mnt/modm/weights/sd35" in doc["spec"]["serveConfigV2"]


def test_generator_refuses_a_gpu_group_smaller_than_the_peak():
    with pytest.raises(ValueError, match="GPU: needs 9, 2 worker pods have 8"):
        kuberay.render_rayservice(read_yaml(GPU_SERVE_CONFIGS[0]), options(gpu_workers=2))
    # A parallel large model reserves world_size GPUs per replica on top of its own.
    parallel = gpu_serve_config_with("models.large.parallel", {"method": "distrifusion", "world_size": 2})
    with pytest.raises(ValueError, match="GPU: needs 25, 3 worker pods have 12"):
        kuberay.render_rayservice(parallel, options())
    kuberay.render_rayservice(parallel, options(gpu_workers=7))


def test_generator_refuses_a_system_config_the_pods_cannot_read():
    serve_config = read_yaml(GPU_SERVE_CONFIGS[0])
    serve_config["applications"][0]["args"] = {"config": "configs/system.yaml"}
    with pytest.raises(ValueError, match="args.config names a file"):
        kuberay.render_rayservice(serve_config, options())


def test_cli_reports_bad_input_without_a_traceback(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_info:
        kuberay.main(["deployments/configs/local.yaml", "--image", "modm:test"])
    assert exit_info.value.code == 2
    assert "'.modm/cache'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        kuberay.main([str(GPU_SERVE_CONFIGS[0]), "--image", "modm:test", "--name", "Not_A_K8s_Name"])
    assert "name" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- monitoring


def test_prometheus_scrapes_rays_service_discovery_file():
    from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE

    config = read_yaml(CLUSTER / "prometheus.yml")
    files = [f for job in config["scrape_configs"] for sd in job.get("file_sd_configs", []) for f in sd["files"]]
    assert files == [f"/tmp/ray/{PROMETHEUS_SERVICE_DISCOVERY_FILE}"]


def test_grafana_dashboard_plots_metrics_the_app_exports():
    dashboard = (CLUSTER / "grafana-dashboard.json").read_text(encoding="utf-8")
    plotted = {re.sub(r"_(bucket|sum|count)$", "", name) for name in re.findall(r"ray_(modm_\w+)", dashboard)}
    source = (ROOT / "deployments" / "metrics.py").read_text(encoding="utf-8")
    exported = set(re.findall(r"metrics\.(?:Counter|Gauge|Histogram)\(\s*\"(\w+)\"", source))
    assert plotted and plotted <= exported, plotted - exported
