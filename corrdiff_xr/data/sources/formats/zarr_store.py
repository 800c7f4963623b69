"""Zarr stores: through :func:`corrdiff_xr.data.pair.open_dataset` and its integrity checks
(absent chunks refused, codecs size-checked)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import xarray as xr

from corrdiff_xr.data.pair import open_dataset


def open_archive(
    url: str,
    *,
    engine: str,
    storage_options: Mapping[str, Any] | None,
    backend_kwargs: Mapping[str, Any],
    what: str,
) -> xr.Dataset:
    """A Zarr store at any supported fsspec URL or local path, lazily."""
    return open_dataset(url, storage_options=dict(storage_options) if storage_options else None)
