"""Icechunk repositories on local disk: a branch (default ``main``), a tag or a snapshot.

The repository is opened without authorising virtual chunk containers, so virtual chunks
(byte ranges of other files, as kerchunk's) are not read: a repository reads only its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import xarray as xr

from corrdiff_xr.data import integrity
from corrdiff_xr.data.layout import StoreError
from corrdiff_xr.data.sources.formats._common import (
    read_errors,
    remote_only_here,
    with_loaded_coords,
)

#: ``backend_kwargs``: which version of the repository (at most one of them)
BACKEND_KEYS = ("branch", "tag", "snapshot_id")


def open_archive(
    url: str,
    *,
    engine: str,
    storage_options: Mapping[str, Any] | None,
    backend_kwargs: Mapping[str, Any],
    what: str,
) -> xr.Dataset:
    """One version of an Icechunk repository, read-only and lazily."""
    path = remote_only_here(url, what, engine, "Icechunk repository")
    version = dict(backend_kwargs) or {"branch": "main"}
    if len(version) > 1:
        raise StoreError(f"{what}: give one of backend_kwargs {list(BACKEND_KEYS)}, not "
                         f"{sorted(version)}")  # fmt: skip
    with read_errors(url, what, "Icechunk repository"), integrity.guarded_codecs():
        import icechunk

        repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))
        session = repo.readonly_session(**version)
        ds = xr.open_zarr(session.store, consolidated=False, chunks={})
        return with_loaded_coords(ds)
