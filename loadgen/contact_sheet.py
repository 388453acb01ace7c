"""A contact sheet of a run: per request its prompt, the image it got, hit or miss, k and score, and for a MoDM hit
the cached image it was refined from, so that a newcomer sees what the system did.

The served images come from the run's kept images (``ClientConfig.image_dir``, the records' ``path``); a hit's source
comes from the server by the entry id in its answer (``GET /v1/cache/{entry_id}``, fetched by
``fetch_cached_images``), which works whatever filled the cache (this run, a warm-up, an earlier run).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
from PIL import Image, ImageDraw, ImageFont

from loadgen.config import ClientConfig
from loadgen.protocol import CACHE_IMAGE_PATH, build_headers
from modm.workload.records import Outcome, RequestRecord

__all__ = ["build_contact_sheet", "fetch_cached_images", "write_contact_sheet"]

THUMB = 96  # small images (the world's 32x32) are upscaled to this, nearest neighbour, to stay crisp
PAD = 8
COLUMNS = 4
WRAP_CHARS = 34
PROMPT_LINES = 4
HIT_COLOUR, MISS_COLOUR, ERROR_COLOUR = (24, 130, 60), (90, 90, 90), (180, 30, 30)
_BACKGROUND, _CELL, _TEXT = (250, 250, 250), (236, 236, 236), (20, 20, 20)


def fetch_cached_images(
    config: ClientConfig,
    records: Sequence[RequestRecord],
    out_dir: Path,
    *,
    transport: httpx.BaseTransport | None = None,
) -> dict[int, Path]:
    """Fetch the cached image of every hit's entry into ``out_dir/entry-<id>.png``; {entry id: path} of those the
    server still has (an evicted entry answers 404 and is left out)."""
    wanted = sorted({r.entry_id for r in records if r.hit and r.entry_id is not None})
    found: dict[int, Path] = {}
    if not wanted:
        return found
    out_dir.mkdir(parents=True, exist_ok=True)
    with httpx.Client(
        base_url=config.url, timeout=config.request_timeout_s, trust_env=False, transport=transport
    ) as http:
        for entry_id in wanted:
            response = http.get(CACHE_IMAGE_PATH.format(entry_id=entry_id), headers=build_headers(config))
            if response.status_code == 404:
                continue
            response.raise_for_status()
            path = out_dir / f"entry-{entry_id}.png"
            path.write_bytes(response.content)
            found[entry_id] = path
    return found


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _thumb(path: Path | None) -> Image.Image | None:
    if path is None or not Path(path).is_file():
        return None
    with Image.open(path) as image:
        return image.convert("RGB").resize((THUMB, THUMB), Image.Resampling.NEAREST)


def _resolve(path: str | None, base_dir: Path | None) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    return p if p.is_absolute() or base_dir is None else base_dir / p


def _status(record: RequestRecord) -> tuple[str, tuple[int, int, int]]:
    if record.outcome is not Outcome.OK:
        return record.outcome.value.upper(), ERROR_COLOUR
    score = "-" if record.score is None else f"{record.score:.3f}"
    if record.hit:
        return f"HIT  k={record.k}  score {score}", HIT_COLOUR
    return f"MISS  score {score}", MISS_COLOUR


def build_contact_sheet(
    records: Sequence[RequestRecord],
    *,
    base_dir: Path | None = None,
    cached_images: Mapping[int, Path] | None = None,
    columns: int = COLUMNS,
    title: str | None = None,
) -> Image.Image:
    """The sheet as an image. ``base_dir`` resolves the records' relative image paths (the records file's folder);
    ``cached_images`` maps a hit's entry id to the cached image it was refined from."""
    if not records:
        raise ValueError("a contact sheet needs at least one record")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    cached_images = cached_images or {}
    font, small = _font(12), _font(10)
    line_h = 15
    cell_w = 2 * THUMB + 3 * PAD + 24
    text_h = line_h * (1 + PROMPT_LINES)
    cell_h = PAD + text_h + THUMB + line_h + PAD
    title_h = 2 * line_h if title else 0
    rows = -(-len(records) // columns)
    sheet = Image.new("RGB", (columns * (cell_w + PAD) + PAD, title_h + rows * (cell_h + PAD) + PAD), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((PAD, PAD), title, fill=_TEXT, font=font)
    for n, record in enumerate(records):
        x0 = PAD + (n % columns) * (cell_w + PAD)
        y0 = title_h + PAD + (n // columns) * (cell_h + PAD)
        draw.rectangle((x0, y0, x0 + cell_w, y0 + cell_h), fill=_CELL)
        status, colour = _status(record)
        who = f"#{record.index}" + (f" {record.user}" if record.user else "")
        draw.text((x0 + PAD, y0 + PAD), f"{who}  {status}", fill=colour, font=font)
        lines = textwrap.wrap(record.prompt, WRAP_CHARS) or [""]
        if len(lines) > PROMPT_LINES:
            lines = lines[: PROMPT_LINES - 1] + [lines[PROMPT_LINES - 1][: WRAP_CHARS - 3] + "..."]
        for i, line in enumerate(lines):
            draw.text((x0 + PAD, y0 + PAD + line_h * (1 + i)), line, fill=_TEXT, font=small)
        y_img = y0 + PAD + text_h
        served = _thumb(_resolve(record.path, base_dir))
        if served is not None:
            sheet.paste(served, (x0 + PAD, y_img))
            draw.text((x0 + PAD, y_img + THUMB + 2), f"served ({record.model or '?'})", fill=_TEXT, font=small)
        else:
            draw.text((x0 + PAD, y_img + THUMB // 2), "no image", fill=ERROR_COLOUR, font=small)
        if record.hit and record.entry_id is not None:
            x_src = x0 + 2 * PAD + THUMB + 14
            draw.text((x0 + 2 * PAD + THUMB, y_img + THUMB // 2 - 6), "<", fill=HIT_COLOUR, font=font)
            source = _thumb(cached_images.get(record.entry_id))
            if source is not None:
                sheet.paste(source, (x_src, y_img))
            else:
                draw.text((x_src, y_img + THUMB // 2), "evicted", fill=ERROR_COLOUR, font=small)
            draw.text((x_src, y_img + THUMB + 2), f"refined from entry {record.entry_id}", fill=_TEXT, font=small)
    return sheet


def write_contact_sheet(path: Path, records: Sequence[RequestRecord], **kwargs) -> Path:
    """``build_contact_sheet`` saved as a PNG at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    build_contact_sheet(records, **kwargs).save(path, optimize=True)
    return path
