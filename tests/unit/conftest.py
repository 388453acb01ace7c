"""One torch thread for the unit tests: the tiny models run fastest on one, and two threads per process
oversubscribe the machine's two shared cores badly (a tiny 6-step generation goes from ~0.5 s to over 5 s under
load)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def single_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
