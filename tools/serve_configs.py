"""The Serve configs the Serve layer ships (package data of `deployments`: deployments/configs/*.yaml)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["local_config_path", "serve_config_path", "tiny_config_path"]


def serve_config_path(name: str) -> Path:
    """deployments/configs/<name>.yaml, wherever the package is installed."""
    path = Path(str(resources.files("deployments") / "configs" / f"{name}.yaml"))
    if not path.is_file():
        raise FileNotFoundError(f"no Serve config named {name!r} ({path})")
    return path


def local_config_path() -> Path:
    """The whole app on one CPU machine with the trained miniature world (`make demo`)."""
    return serve_config_path("local")


def tiny_config_path() -> Path:
    """The same app on the tiny random zoo (shapes and classes only: the serving benchmark, the zoo's tests)."""
    return serve_config_path("local-tiny")
