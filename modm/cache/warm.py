"""Warm pre-cache (MoDM warms its cache with 10k large-model images before serving): admit a folder of existing
images, or generate one image per prompt of a list with the large model (`modm cache warm`, `cache.warm`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from modm.cache.constants import WARM_BATCH_SIZE
from modm.images import png_bytes
from modm.cache.image_cache import ImageCache
from modm.cache.records import NewEntry, check_text

__all__ = [
    "IMAGE_SUFFIXES",
    "WarmReport",
    "prompt_for_image",
    "read_prompts",
    "warm_from_folder",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

EmbedFn = Callable[[list[Image.Image], list[str]], np.ndarray]


@dataclass(frozen=True)
class WarmReport:
    added: int  # entries admitted (later ones may have evicted earlier ones at capacity)
    skipped: int  # image files that could not be read or gave no prompt
    skipped_files: tuple[str, ...]  # their names, for the operator
    ignored: int  # files that are not images (sidecars included)


def prompt_for_image(path: Path) -> str | None:
    """The prompt of `path`: its sidecar `<stem>.txt` if readable and non-blank, else the file name with
    underscores as spaces (MoDM's `extract_prompt` convention). None when both are blank."""
    sidecar = path.with_suffix(".txt")
    if sidecar.is_file():
        try:
            text = sidecar.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            logger.warning("warm: unreadable prompt file %s (%s); using the image name", sidecar, err)
        else:
            if text:
                return text
    name = path.stem.replace("_", " ").strip()
    return name or None


def _load_png(path: Path) -> tuple[Image.Image, bytes]:
    """Decode any supported image, and re-encode it as an RGB PNG (the format the cache stores)."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    return rgb, png_bytes(rgb)


def warm_from_folder(
    cache: ImageCache,
    folder: str | os.PathLike,
    embed_fn: EmbedFn,
    *,
    tenant: str,
    source_model: str,
    batch_size: int = WARM_BATCH_SIZE,
) -> WarmReport:
    """Admit every png/jpg/webp image in `folder` (not recursive, sorted by name) to `cache` as full
    generations (k=0) of `source_model` for `tenant`.

    `embed_fn(images, prompts)` returns the (n, dim) L2-normalised embeddings the entries are retrieved by:
    CLIP image embeddings in MoDM mode, prompt embeddings in text->text mode. Unreadable images are skipped
    with a warning; a wrongly shaped embedding is the caller's bug and raises ValueError.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"warm folder {str(folder)!r} is not a directory")
    check_text(tenant, "tenant")
    check_text(source_model, "source_model")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")

    files = sorted(p for p in folder.iterdir() if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if len(images) > cache.config.capacity:
        logger.warning(
            "warm: %d images exceed the cache capacity %d; FIFO keeps the last %d by name",
            len(images),
            cache.config.capacity,
            cache.config.capacity,
        )
    added, skipped = 0, []

    def admit(batch: list[tuple[Image.Image, bytes, str]]) -> int:
        embeddings = np.asarray(embed_fn([b[0] for b in batch], [b[2] for b in batch]))
        if embeddings.shape != (len(batch), cache.dim):
            raise ValueError(
                f"embed_fn returned shape {embeddings.shape} for {len(batch)} images; expected "
                f"({len(batch)}, {cache.dim})"
            )
        cache.add_many(
            [
                NewEntry(png_bytes=png, embedding=vector, prompt=prompt, tenant=tenant, source_model=source_model, k=0)
                for (_, png, prompt), vector in zip(batch, embeddings)
            ]
        )
        return len(batch)

    batch: list[tuple[Image.Image, bytes, str]] = []
    for path in images:
        prompt = prompt_for_image(path)
        if prompt is None:
            logger.warning("warm: skipping %s: no prompt in a sidecar or the file name", path)
            skipped.append(path.name)
            continue
        try:
            image, png = _load_png(path)
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError) as err:
            logger.warning("warm: skipping unreadable image %s: %s", path, err)
            skipped.append(path.name)
            continue
        batch.append((image, png, prompt))
        if len(batch) == batch_size:
            added += admit(batch)
            batch = []
    if batch:
        added += admit(batch)
    report = WarmReport(
        added=added, skipped=len(skipped), skipped_files=tuple(skipped), ignored=len(files) - len(images)
    )
    logger.info("warm: %s -> %s", folder, report)
    return report


# ---------------------------------------------------------------------------------------------- from a prompt list
PROMPT_COLUMN = "prompt"


def read_prompts(path: str | os.PathLike, limit: int | None = None) -> list[str]:
    """The prompts of a .txt (one a line) or .tsv file (its 'prompt' column, else its last column; a first row
    naming a 'prompt' column is a header), in file order, blank lines and repeats dropped, the first `limit` kept."""
    path = Path(path)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {str(path)!r} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix.lower() == ".tsv" and lines:
        header = lines[0].split("\t")
        column = header.index(PROMPT_COLUMN) if PROMPT_COLUMN in header else None
        rows = [line.split("\t") for line in (lines[1:] if column is not None else lines)]
        lines = [row[column if column is not None else -1] if len(row) > (column or 0) else "" for row in rows]
    prompts = list(dict.fromkeys(p.strip() for p in lines if p.strip()))
    if not prompts:
        raise ValueError(f"prompts file {str(path)!r} holds no prompt")
    return prompts[:limit] if limit is not None else prompts
