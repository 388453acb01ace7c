"""Fixtures for the load generator's tests: fake images servers on 127.0.0.1."""

from __future__ import annotations


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
