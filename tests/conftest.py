"""Shared pytest configuration.

gcsfs reads ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT`` at import; without ``false`` every call
probes a Google API and, offline, waits ~60 s. Set it before any test module imports gcsfs.
The object-store server fixtures (``s3_server``, ``gcs_server``) live in tests/servers.py and
are made available to every test module here.
"""

from __future__ import annotations

import os

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

# Tests run under xdist with one worker per core: torch's default of one thread per core in
# every worker oversubscribes the machine, and tiny networks then run many times slower.
import torch  # noqa: E402

torch.set_num_threads(1)

import pytest  # noqa: E402

# tests/ is on sys.path (rootdir conftest, no __init__.py): works under `pytest` and
# `python -m pytest` alike
from servers import gcs_server, s3_server  # noqa: E402, F401


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Put torch back on one thread after any test that changed it (see above)."""
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


# -- data fixtures (data layer A) ------------------------------------------------------------


@pytest.fixture
def tiny_synthetic():
    """A small lazy canonical Dataset: 32 x 32 fine, 8 x 8 coarse, 4 hourly steps."""
    from corrdiff_xr.data import synthetic_dataset

    return synthetic_dataset(ny=32, nx=32, nt=4, factor=4, seed=3)


@pytest.fixture
def tiny_store(tmp_path, tiny_synthetic):
    """``tiny_synthetic`` written to a Zarr store on disk; returns its path (str)."""
    path = tmp_path / "tiny.zarr"
    tiny_synthetic.to_zarr(path, mode="w", consolidated=False)
    return str(path)
