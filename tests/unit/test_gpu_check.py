"""benchmarks/gpu_check.py in its CPU mode: the twins' miss, hit and resume, with neither ray nor open_clip
importable (the GPU machine has neither)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modm.models.architectures import ARCHITECTURES

ROOT = Path(__file__).resolve().parents[2]
# Run the script with ray, open_clip and faiss made unimportable, as on the bare GPU machine.
LAUNCH = (
    "import runpy, sys; [sys.modules.__setitem__(m, None) for m in ('ray', 'open_clip', 'faiss')]; "
    "sys.argv = ['gpu_check.py'] + sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def test_cpu_mode_runs_the_twins_without_ray_or_open_clip(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            LAUNCH.replace("sys.argv[0]", repr(str(ROOT / "benchmarks" / "gpu_check.py"))),
            "--cpu",
            "--quick",
            "--configs",
            "gpu-sd35-sdxl.yaml",
            "--json",
            str(out),
            "--twin-dir",
            str(tmp_path / "t"),
        ],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.is_file(), proc.stderr[-3000:]
    report = json.loads(out.read_text())
    checks = {r["check"]: r for r in report["configs"]["gpu-sd35-sdxl.yaml"]["twins"]}
    assert set(checks) >= {"build", "miss", "load small", "hit@k=30", "nirvana:snapshots", "resume@k=25"}
    failed = {name: r.get("error") or r for name, r in checks.items() if not r["ok"]}
    assert not failed, failed
    assert checks["miss"]["pipeline"] == "StableDiffusion3Pipeline"
    assert checks["load small"]["pipeline"] == "StableDiffusionXLPipeline"
    assert checks["resume@k=25"]["max_grey_level_diff"] <= 1
    assert "real_size" not in report["configs"]["gpu-sd35-sdxl.yaml"]  # CUDA only
    assert proc.returncode == 0 and "twin miss" in proc.stdout


def _scaled(arch):
    """The architecture with each model component through the twin rule (tokenizers and scheduler unchanged)."""
    from modm.models.architectures import Component
    from modm.models.twins import SCALERS, scaled_config

    return dataclasses.replace(
        arch,
        components={
            name: Component(c.library, c.class_name, scaled_config(c), c.source)
            if c is not None and c.class_name in SCALERS
            else c
            for name, c in arch.components.items()
        },
    )


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=lambda a: a.repo_id)
def test_the_real_size_step_takes_each_denoisers_inputs(arch):
    """The CUDA path's per-step measurement, run on CPU at twin size: the inputs it builds fit every denoiser."""
    gpu_check = _load_script()
    result = gpu_check.step_latency_s(
        _scaled(arch),
        guidance_scale=5.0,
        max_seq=16,
        device=torch.device("cpu"),
        side_px=64,
        dtype=torch.float32,
        warmup=0,
        repeats=1,
    )
    assert result["step_s"] > 0 and result["denoiser"] == arch.denoiser.class_name
    assert result["batch"] == (1 if arch.denoiser.config.get("guidance_embeds") else 2)


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
