"""Fixtures for the parallel tests: the spawn helpers live next to the tests, so make them importable."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def clip_tokenizer(tmp_path_factory):
    """The offline CLIP tokenizer, built once and handed to the spawned ranks (pickled)."""
    from modm.models.tokenizer import build_clip_tokenizer

    return build_clip_tokenizer(tmp_path_factory.mktemp("clip-bpe"))
