"""The on-disk world directory: one subfolder per component and a manifest, `world.json`.

The manifest records the format version, the command and seed that built the directory, and per component its
subfolder, its files and what its build step reported (training time, accuracy). A directory built by code of
another `WORLD_FORMAT_VERSION`, or missing a component or one of its files, is refused with the path and what is
missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Bump on any incompatible change to the world (scenes, captions, rendering) or to a component's format.
WORLD_FORMAT_VERSION = 1
MANIFEST_NAME = "world.json"


class WorldFormatError(ValueError):
    """A world directory that cannot be used: missing, incomplete or built by another code version."""


@dataclass
class ComponentRecord:
    name: str
    path: str  # subfolder, relative to the world directory
    files: list[str]  # files (relative to the subfolder) that must exist
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class WorldManifest:
    format_version: int
    command: str
    seed: int
    image_size: int
    components: dict[str, ComponentRecord] = field(default_factory=dict)

    def to_json(self) -> str:
        body = {
            "format_version": self.format_version,
            "command": self.command,
            "seed": self.seed,
            "image_size": self.image_size,
            "components": {n: {"path": c.path, "files": c.files, "info": c.info} for n, c in self.components.items()},
        }
        return json.dumps(body, indent=2, sort_keys=False) + "\n"

    def save(self, world_dir: str | Path) -> Path:
        path = Path(world_dir) / MANIFEST_NAME
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def load(cls, world_dir: str | Path) -> WorldManifest:
        path = Path(world_dir) / MANIFEST_NAME
        if not path.is_file():
            raise WorldFormatError(
                f"{world_dir}: not a world directory (no {MANIFEST_NAME}); build one with `modm world build DIR`"
            )
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise WorldFormatError(f"{path}: not valid JSON ({err})") from None
        missing = [k for k in ("format_version", "command", "seed", "image_size", "components") if k not in body]
        if missing:
            raise WorldFormatError(f"{path}: manifest lacks {missing}")
        components = {
            n: ComponentRecord(n, c["path"], list(c.get("files", [])), dict(c.get("info", {})))
            for n, c in body["components"].items()
        }
        return cls(
            int(body["format_version"]), str(body["command"]), int(body["seed"]), int(body["image_size"]), components
        )


def validate_world_dir(world_dir: str | Path, required: tuple[str, ...] = ()) -> WorldManifest:
    """The manifest of a usable world directory; raises `WorldFormatError` naming the path and what is wrong."""
    world_dir = Path(world_dir)
    if not world_dir.is_dir():
        raise WorldFormatError(f"{world_dir}: no such world directory")
    manifest = WorldManifest.load(world_dir)
    if manifest.format_version != WORLD_FORMAT_VERSION:
        raise WorldFormatError(
            f"{world_dir}: built with world format {manifest.format_version}, this code reads "
            f"{WORLD_FORMAT_VERSION}; rebuild it with `{manifest.command}`"
        )
    absent = [name for name in required if name not in manifest.components]
    if absent:
        raise WorldFormatError(f"{world_dir}: missing component(s) {absent} (has {sorted(manifest.components)})")
    for record in manifest.components.values():
        missing_files = [f for f in record.files if not (world_dir / record.path / f).is_file()]
        if missing_files:
            raise WorldFormatError(f"{world_dir / record.path}: component {record.name!r} is missing {missing_files}")
    return manifest
