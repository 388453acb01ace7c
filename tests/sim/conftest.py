"""Fixtures for the simulator tests."""

from __future__ import annotations

import numpy as np
import pytest

from sim_workloads import clustered_embeddings


@pytest.fixture
def embeddings_400() -> np.ndarray:
    return clustered_embeddings(400, n_topics=60)


@pytest.fixture(autouse=True)
def single_threaded_faiss():
    """One-query searches gain nothing from OpenMP threads, and on shared cores they cost 20x (the simulator
    itself runs with one thread; tests that use the caches directly get the same)."""
    import faiss

    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(previous)
