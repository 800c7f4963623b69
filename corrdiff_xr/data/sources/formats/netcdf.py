"""NetCDF files: NetCDF-4/HDF5 through h5netcdf (local, or any fsspec URL opened as a file
object) and NetCDF-3/4 through netCDF4 (local files)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

import xarray as xr

from corrdiff_xr.data.layout import StoreError
from corrdiff_xr.data.sources.formats._common import local_path, read_errors, with_loaded_coords

#: suffixes taken as NetCDF when no engine is named
SUFFIXES = (".nc", ".nc4", ".netcdf", ".h5", ".hdf5")
#: ``backend_kwargs`` passed on: the group holding the variables
BACKEND_KEYS = ("group",)


def open_archive(
    url: str,
    *,
    engine: str,
    storage_options: Mapping[str, Any] | None,
    backend_kwargs: Mapping[str, Any],
    what: str,
) -> xr.Dataset:
    """A NetCDF file, lazily: one dask chunk per on-disk chunk (the file's own chunking)."""
    path = local_path(url, what, "NetCDF file")
    hint = "; a NetCDF-3 file needs engine 'netcdf4'" if engine == "h5netcdf" else ""
    if path is None and engine != "h5netcdf":
        raise StoreError(
            f"{what}: engine {engine!r} reads local files only; give engine 'h5netcdf' for a "
            "NetCDF-4 file at a URL"
        )
    with read_errors(url, what, "NetCDF file", hint):
        if path is not None:
            source: str | IO[bytes] = str(path)
        else:
            import fsspec

            source = fsspec.open(url, mode="rb", **dict(storage_options or {})).open()
        ds = xr.open_dataset(source, engine=engine, chunks={}, **dict(backend_kwargs))
        return with_loaded_coords(ds)
