"""Fixtures for the load generator's tests: fake images servers on 127.0.0.1 and small trace files."""

from __future__ import annotations

from pathlib import Path

import pytest

from fake_images_server import FakeImagesServer, FakeServerSettings


@pytest.fixture
def make_server():
    """Factory: ``make_server(**settings)`` starts a fake server; all are stopped at the end of the test."""
    servers = []

    def factory(**settings) -> FakeImagesServer:
        server = FakeImagesServer(FakeServerSettings(**settings)).start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


# The first 1,000 rows of DiffusionDB (prompt, ir_id, part), shipped so that the tests need nothing outside the repo.
DIFFUSIONDB_SAMPLE = Path(__file__).parent / "data" / "diffusiondb_prompts_1k.tsv"
