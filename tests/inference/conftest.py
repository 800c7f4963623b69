"""Fixtures shared by the inference tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def cluster():
    """A real 2-process LocalCluster, one thread per worker (one per test module)."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
    ) as c:
        yield c
