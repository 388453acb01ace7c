"""The layers (README "Layout"): modm at the bottom imports none of ray, deployments, loadgen or tools; deployments
does not import the client side (loadgen, tools); loadgen stays light (modm.workload only: no torch, no Ray).

Imports are read with `ast`, not executed, so a lazy import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN = {
    "modm": {"ray", "deployments", "loadgen", "tools"},
    "deployments": {"loadgen", "tools"},
    "loadgen": {"ray", "deployments", "tools", "torch"},
    "modm/workload": {"ray", "deployments", "loadgen", "tools", "torch"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level package of every module `path` imports (relative imports are its own package's)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def modm_subpackages_imported(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        modules = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module]
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
            else []
        )
        found.update(m for m in modules if m.startswith("modm.") and not m.startswith("modm.workload"))
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_layer_imports_the_layers_above_it(layer):
    files = sorted((ROOT / layer).rglob("*.py"))
    assert files, f"no Python files under {layer}/"
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[layer])
        for path in files
        if imported_packages(path) & FORBIDDEN[layer]
    }
    assert not offenders, f"{layer}/ imports what sits above it: {offenders}"


@pytest.mark.parametrize("layer", ["loadgen", "modm/workload"])
def test_the_workload_side_uses_only_modm_workload(layer):
    offenders = {
        str(path.relative_to(ROOT)): sorted(modm_subpackages_imported(path))
        for path in sorted((ROOT / layer).rglob("*.py"))
        if modm_subpackages_imported(path)
    }
    assert not offenders, f"{layer}/ imports modm beyond modm.workload: {offenders}"


def test_the_checker_sees_imports_anywhere(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\n\ndef f():\n    from ray import serve\n    import loadgen.cli\n\nfrom . import sibling\n"
    )
    assert imported_packages(sample) == {"os", "ray", "loadgen"}


def heavy_modules_loaded_by(modules: tuple[str, ...], heavy: tuple[str, ...]) -> str:
    """The modules of the `heavy` packages that importing `modules` in a fresh interpreter loads ('' if none)."""
    code = (
        f"import sys, {', '.join(modules)}\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})\n"
        "sys.exit(', '.join(heavy[:8]) or None)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    return result.stderr.strip() if result.returncode else ""


def test_the_load_generator_loads_without_torch_or_ray():
    loaded = heavy_modules_loaded_by(("loadgen", "loadgen.cli"), ("torch", "ray", "deployments", "transformers"))
    assert not loaded, f"importing loadgen.cli loaded: {loaded}"


# The deployments that route, index and monitor never run a model: a replica of one starts without importing torch
# (about 2-3 s of CPU per replica start on these cores), so scaling routers or cache readers stays cheap.
MODEL_FREE_DEPLOYMENTS = (
    "deployments.router",
    "deployments.cache_index",
    "deployments.latent_cache",
    "deployments.monitor",
    "deployments.ingress",
    "deployments.http_ingress",
)


def test_model_free_deployments_load_without_torch():
    loaded = heavy_modules_loaded_by(MODEL_FREE_DEPLOYMENTS, ("torch", "diffusers", "transformers"))
    assert not loaded, f"importing the model-free deployments loaded: {loaded}"
