"""Image sets to evaluate: a folder of images with sidecar prompts, or a parquet/CSV manifest.

Folder: every image file directly inside (sorted by name); its prompt is the text of `<name>.txt` next to it
(`PromptSource.SIDECAR`) or its file name with underscores read as spaces (`PromptSource.FILENAME`, the convention
MoDM's evaluation scripts use).

Manifest (.parquet or .csv): one row per image with columns `path` (relative paths are resolved against the
manifest's folder) and `prompt`, plus optional group columns that the load generator's records carry:
`system` (which serving system produced the image), `hit` (bool, or 'hit'/'miss') and `k` (steps skipped on a hit;
empty on a miss). A loadgen records file with a `path` column added is a valid manifest: its `mode` column
(modm / vanilla / nirvana) stands in for `system` when there is none, and rows that produced no image
(`outcome` other than "ok") or were cache warm-up (`warm_up` true; MoDM scores only the requests served after
the warm-up) are skipped.

Pixels: every image is converted to 8-bit RGB when read. Grayscale is replicated to three channels; an alpha channel
is dropped (as pytorch_fid does, so transparent pixels keep their stored colour); 16-bit grayscale is scaled to
8 bits. Sizes may differ: each metric resizes to its own network's input (documented with the metric).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from modm.quality.errors import QualityInputError

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageEntry",
    "MANIFEST_SUFFIXES",
    "PromptSource",
    "iter_image_batches",
    "load_image_set",
    "load_rgb",
    "prompts_of",
    "read_manifest_table",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MANIFEST_SUFFIXES = (".parquet", ".csv")
_MAX_NAMES_IN_ERROR = 5


class PromptSource(str, Enum):
    SIDECAR = "sidecar"  # <name>.txt next to the image
    FILENAME = "filename"  # the file name, underscores as spaces (MoDM's eval scripts)
    NONE = "none"  # no prompts (FID and IS do not need them)


@dataclass(frozen=True)
class ImageEntry:
    path: Path
    prompt: str | None = None
    system: str | None = None
    hit: bool | None = None
    k: int | None = None


def load_rgb(path: str | Path) -> Image.Image:
    """Read an image as 8-bit RGB (see the module docstring for how other modes are converted)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
    except FileNotFoundError:
        raise QualityInputError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as err:
        raise QualityInputError(f"cannot read image {path}: {err}") from None
    if im.mode.startswith("I;16") or im.mode == "I":
        # 16-bit grayscale: PIL's convert("RGB") would clip everything above 255 to white.
        array = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(array / 257.0, 0, 255).round().astype(np.uint8), mode="L")
    elif im.mode == "F":
        raise QualityInputError(f"{path}: floating-point images (mode F) have no defined 8-bit range")
    return im.convert("RGB")


def _folder_entries(folder: Path, prompts: PromptSource, system: str | None) -> list[ImageEntry]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise QualityInputError(f"no images in {folder} (looked for {', '.join(IMAGE_SUFFIXES)})")
    if prompts is PromptSource.NONE:
        return [ImageEntry(p, system=system) for p in files]
    if prompts is PromptSource.FILENAME:
        return [ImageEntry(p, prompt=p.stem.replace("_", " ").strip() or None, system=system) for p in files]
    entries, missing = [], []
    for p in files:
        sidecar = p.with_suffix(".txt")
        if not sidecar.is_file():
            missing.append(p.name)
            continue
        entries.append(ImageEntry(p, prompt=sidecar.read_text(encoding="utf-8").strip(), system=system))
    if missing:
        shown = ", ".join(missing[:_MAX_NAMES_IN_ERROR]) + (" ..." if len(missing) > _MAX_NAMES_IN_ERROR else "")
        raise QualityInputError(
            f"{len(missing)} of {len(files)} images in {folder} have no prompt file "
            f"<name>.txt: {shown} (use prompts 'filename' to read prompts from file names)"
        )
    return entries


def _parse_hit(value, row: int, path: Path) -> bool | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "hit", "1", "yes"):
        return True
    if text in ("false", "miss", "0", "no"):
        return False
    if text == "":
        return None
    raise QualityInputError(f"{path}: row {row}: hit={value!r} is not a boolean (true/false, hit/miss, 1/0)")


def _parse_k(value, row: int, path: Path) -> int | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
        return None
    try:
        k = float(value)
    except (TypeError, ValueError):
        raise QualityInputError(f"{path}: row {row}: k={value!r} is not an integer") from None
    if not k.is_integer() or k < 0:
        raise QualityInputError(f"{path}: row {row}: k={value!r} must be a non-negative integer")
    return int(k)


def read_manifest_table(path: Path):
    """A .parquet or .csv table as pyarrow; unreadable or missing files raise `QualityInputError`."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        if path.suffix.lower() == ".parquet":
            return pq.read_table(path)
        # Strings stay strings (a prompt such as "1" must not become a number); path/prompt are text anyway.
        return pacsv.read_csv(
            path,
            convert_options=pacsv.ConvertOptions(
                column_types={"path": pa.string(), "prompt": pa.string(), "system": pa.string()}
            ),
        )
    except FileNotFoundError:
        raise QualityInputError(f"manifest not found: {path}") from None
    except (pa.ArrowException, OSError) as err:
        raise QualityInputError(f"cannot read manifest {path}: {err}") from None


def _manifest_entries(path: Path, prompts: PromptSource, system: str | None) -> list[ImageEntry]:
    table = read_manifest_table(path)
    columns = set(table.column_names)
    needed = {"path"} | ({"prompt"} if prompts is not PromptSource.NONE else set())
    if needed - columns:
        raise QualityInputError(f"manifest {path} lacks column(s) {sorted(needed - columns)}; it has {sorted(columns)}")
    rows = table.to_pylist()
    if not rows:
        raise QualityInputError(f"manifest {path} has no rows")
    system_column = "system" if "system" in columns else "mode"  # loadgen records name the system `mode`
    entries, no_prompt = [], []
    for i, row in enumerate(rows):
        if row.get("outcome", "ok") != "ok" or row.get("warm_up") is True:
            continue
        if not row["path"]:
            raise QualityInputError(f"{path}: row {i} has an empty path")
        image_path = Path(row["path"])
        image_path = image_path if image_path.is_absolute() else path.parent / image_path
        prompt = row.get("prompt") if prompts is not PromptSource.NONE else None
        if prompts is not PromptSource.NONE and (not isinstance(prompt, str) or not prompt.strip()):
            no_prompt.append(i)
        row_system = row.get(system_column)
        entries.append(
            ImageEntry(
                image_path,
                prompt=prompt.strip() if isinstance(prompt, str) else None,
                system=str(row_system) if row_system not in (None, "") else system,
                hit=_parse_hit(row.get("hit"), i, path),
                k=_parse_k(row.get("k"), i, path),
            )
        )
    if no_prompt:
        raise QualityInputError(
            f"manifest {path}: {len(no_prompt)} row(s) without a prompt, e.g. rows {no_prompt[:_MAX_NAMES_IN_ERROR]}"
        )
    if not entries:
        raise QualityInputError(f"manifest {path}: no row is a served image (all failed or warm-up)")
    return entries


def load_image_set(
    source: str | Path, *, prompts: PromptSource = PromptSource.SIDECAR, system: str | None = None
) -> list[ImageEntry]:
    """The images (and prompts and groups) at `source`: a folder or a .parquet/.csv manifest.

    `system` labels entries whose source gives no system (a plain folder, or a manifest without that column).
    Files are not opened here; `load_rgb` reads them batch by batch.
    """
    source = Path(source)
    if source.is_dir():
        entries = _folder_entries(source, prompts, system)
    elif source.suffix.lower() in MANIFEST_SUFFIXES:
        entries = _manifest_entries(source, prompts, system)
    elif not source.exists():
        raise QualityInputError(f"no such folder or manifest: {source}")
    else:
        raise QualityInputError(f"{source} is neither a folder nor a manifest ({', '.join(MANIFEST_SUFFIXES)})")
    if prompts is not PromptSource.NONE:
        empty = [e.path.name for e in entries if not e.prompt]
        if empty:
            raise QualityInputError(
                f"{len(empty)} image(s) in {source} have an empty prompt, e.g. {empty[:_MAX_NAMES_IN_ERROR]}"
            )
    return entries


def prompts_of(entries: Sequence[ImageEntry]) -> list[str]:
    """The entries' prompts; raises if any is missing (the set was loaded without prompts)."""
    missing = [e.path.name for e in entries if not e.prompt]
    if missing:
        raise QualityInputError(f"{len(missing)} image(s) have no prompt, e.g. {missing[:_MAX_NAMES_IN_ERROR]}")
    return [e.prompt for e in entries]


def iter_image_batches(entries: Sequence[ImageEntry], batch_size: int) -> Iterator[tuple[slice, list[Image.Image]]]:
    """(positions, RGB images) batches, so a large set is never held in memory at once."""
    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size} must be positive")
    for start in range(0, len(entries), batch_size):
        chunk = entries[start : start + batch_size]
        yield slice(start, start + len(chunk)), [load_rgb(e.path) for e in chunk]
