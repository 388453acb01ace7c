"""The contact sheet from fake records: layout, the served and source images where they belong, fetching sources."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from PIL import Image

from loadgen.config import ClientConfig
from loadgen.contact_sheet import (
    COLUMNS,
    HIT_COLOUR,
    MISS_COLOUR,
    THUMB,
    build_contact_sheet,
    fetch_cached_images,
    write_contact_sheet,
)
from loadgen.protocol import _fill_from_response
from modm.workload.records import Outcome, RequestRecord

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 200, 0)


def png(path, colour, size=32):
    Image.new("RGB", (size, size), colour).save(path)
    return path.name


def colour_blocks(sheet: Image.Image, colour) -> int:
    """How many THUMB x THUMB blocks of exactly `colour` the sheet holds (counted by pixels)."""
    pixels = np.asarray(sheet)
    return int(np.all(pixels == colour, axis=-1).sum()) // (THUMB * THUMB)


def records(tmp_path):
    miss = RequestRecord(
        index=0,
        prompt="a small red circle on the left",
        source_row=0,
        user="u1",
        outcome=Outcome.OK,
        hit=False,
        score=0.41,
        k=0,
        model="large",
        path=png(tmp_path / "0.png", RED),
    )
    hit = RequestRecord(
        index=1,
        prompt="a tiny crimson disc, left side " * 4,
        source_row=1,
        user="u1",
        outcome=Outcome.OK,
        hit=True,
        score=0.93,
        k=25,
        model="small",
        entry_id=7,
        path=png(tmp_path / "1.png", BLUE),
    )
    failed = RequestRecord(index=2, prompt="a green square", source_row=2, outcome=Outcome.TIMEOUT)
    return [miss, hit, failed]


def test_each_request_shows_its_image_and_a_hit_its_cached_source(tmp_path):
    source = tmp_path / "entry-7.png"
    Image.new("RGB", (32, 32), GREEN).save(source)
    sheet = build_contact_sheet(records(tmp_path), base_dir=tmp_path, cached_images={7: source}, title="demo")
    assert sheet.width > COLUMNS * 2 * THUMB and sheet.height > THUMB  # one row of COLUMNS cells
    # 32x32 images upscaled to whole THUMB-sized blocks (nearest: no blended pixels at the edges)
    assert colour_blocks(sheet, RED) == 1 and colour_blocks(sheet, BLUE) == 1 and colour_blocks(sheet, GREEN) == 1
    pixels = np.asarray(sheet)
    red_x = np.nonzero(np.all(pixels == RED, axis=-1))[1].min()
    blue_x = np.nonzero(np.all(pixels == BLUE, axis=-1))[1].min()
    green_x = np.nonzero(np.all(pixels == GREEN, axis=-1))[1].min()
    assert red_x < blue_x < green_x  # request 0's cell, then request 1's image with its source beside it
    # hit and miss labels in their colours
    assert np.all(pixels == HIT_COLOUR, axis=-1).any() and np.all(pixels == MISS_COLOUR, axis=-1).any()


def test_a_miss_shows_no_source_and_an_evicted_source_leaves_a_gap(tmp_path):
    sheet = build_contact_sheet(records(tmp_path), base_dir=tmp_path, cached_images={})
    assert colour_blocks(sheet, GREEN) == 0 and colour_blocks(sheet, BLUE) == 1


def test_rows_wrap_after_the_column_count(tmp_path):
    rows = records(tmp_path)
    one_row = build_contact_sheet(rows, base_dir=tmp_path, columns=3)
    two_rows = build_contact_sheet(rows, base_dir=tmp_path, columns=2)
    assert two_rows.height > one_row.height and two_rows.width < one_row.width


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least one record"):
        build_contact_sheet([])
    with pytest.raises(ValueError, match="columns"):
        build_contact_sheet(records(tmp_path), columns=0)


def test_written_sheet_is_a_png(tmp_path):
    path = write_contact_sheet(tmp_path / "out" / "sheet.png", records(tmp_path), base_dir=tmp_path)
    with Image.open(path) as image:
        assert image.format == "PNG"


def test_sources_are_fetched_by_entry_id_with_the_tenant_and_404_left_out(tmp_path):
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers.get("X-Tenant-Id")))
        if request.url.path == "/v1/cache/7":
            return httpx.Response(200, content=b"\x89PNG fake", headers={"content-type": "image/png"})
        return httpx.Response(404, json={"error": {"message": "no", "type": "not_found"}})

    rows = records(tmp_path) + [
        RequestRecord(index=3, prompt="p", source_row=3, outcome=Outcome.OK, hit=True, k=5, entry_id=8)
    ]
    config = ClientConfig(url="http://server", tenant="demo")
    found = fetch_cached_images(config, rows, tmp_path / "sources", transport=httpx.MockTransport(handler))
    assert found == {7: tmp_path / "sources" / "entry-7.png"} and found[7].read_bytes() == b"\x89PNG fake"
    assert seen == [("/v1/cache/7", "demo"), ("/v1/cache/8", "demo")]


def test_the_entry_id_of_a_hit_is_recorded_from_the_answer():
    record = RequestRecord(index=0, prompt="p", source_row=0)
    body = {"data": [{"b64_json": "AA=="}], "modm": {"hit": True, "k": 10, "score": 0.9, "entry_id": 12}}
    _fill_from_response(record, httpx.Response(200, json=body))
    assert record.entry_id == 12 and record.outcome is Outcome.OK
