"""Load a SystemConfig from YAML (or a dict) with errors that name the offending field and value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from modm.config.schema import SystemConfig


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names each bad field and value."""


def format_validation_error(err: ValidationError, source: str = "config") -> str:
    lines = [f"{source}: {err.error_count()} invalid field(s)"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "<root>"
        value = e.get("input")
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"  {where}: {e['msg']} (got {shown})")
    return "\n".join(lines)


def config_from_dict(data: Any, source: str = "config") -> SystemConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return SystemConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def system_section(data: Any, source: str) -> Any:
    """A Serve config (with `applications`) carries the system config in its first app's `args.system`."""
    if isinstance(data, dict) and "applications" in data:
        apps = data["applications"]
        if not isinstance(apps, list) or not apps or not isinstance(apps[0], dict):
            raise ConfigError(f"{source}: 'applications' must be a non-empty list of apps")
        args = apps[0].get("args") or {}
        if not isinstance(args, dict) or "system" not in args:
            raise ConfigError(f"{source}: applications[0].args.system is missing")
        return args["system"]
    return data


def load_config(path: str | Path) -> SystemConfig:
    """Load a system config YAML, or the system section of a Serve config YAML."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    return config_from_dict(system_section(data, str(path)), str(path))


def resolve_relative_paths(cfg: SystemConfig, base: str | Path) -> SystemConfig:
    """Make local paths absolute against base, so processes with another working directory (Ray replicas) find
    them. Hub ids (no such local path) are left alone."""
    base = Path(base).resolve()

    def local(value: str) -> str:
        p = Path(value).expanduser()
        return str(base / p) if not p.is_absolute() and (base / p).exists() else value

    models = {}
    for role in ("large", "small"):
        spec = getattr(cfg.models, role)
        models[role] = None if spec is None else spec.model_copy(update={"source": local(spec.source)})
    cache_dir = Path(cfg.cache.directory).expanduser()
    cache = cfg.cache.model_copy(update={"directory": str(cache_dir if cache_dir.is_absolute() else base / cache_dir)})
    embedder = cfg.embedder
    if embedder.model and embedder.model.startswith("local-dir:"):
        embedder = embedder.model_copy(update={"model": "local-dir:" + local(embedder.model[len("local-dir:") :])})
    elif embedder.model:
        embedder = embedder.model_copy(update={"model": local(embedder.model)})
    return cfg.model_copy(update={"models": cfg.models.model_copy(update=models), "cache": cache, "embedder": embedder})
