"""One torch thread for the multistage tests: the machine's two cores are shared, and two threads per process
oversubscribe them badly (a tiny training step goes from ~0.06 s to over 1 s under load)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def single_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
