"""Archive formats: one table of openers, one module per format, as anemoi-datasets does.

An archive spec (:func:`~corrdiff_xr.data.archives.open_archives`, a catalog's
``ArchiveReader`` entry) names its format with ``engine`` and passes ``backend_kwargs`` on;
without an engine the URL's suffix decides (``.nc`` NetCDF, ``.grib2`` GRIB), else Zarr.
Every opener returns the archive as it is, lazily (data variables as dask arrays, coordinates
loaded), for :mod:`corrdiff_xr.data.sources.native` to adopt. A new format is a new module
with an ``open_archive(url, *, engine, storage_options, backend_kwargs, what)`` function plus
one :class:`Format` row in :data:`FORMATS`.

``backend_kwargs`` are checked against each format's own short list (``BACKEND_KEYS``): a
format never passes unknown keys to a library, so no key can choose a filesystem, a server
or a file to write (cfgrib's ``indexpath``, say) behind the spec's back.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import xarray as xr

from corrdiff_xr._redact import redact_url
from corrdiff_xr.data.archive_spec import check_keys, given_options
from corrdiff_xr.data.layout import StoreError
from corrdiff_xr.data.sources.formats import (
    grib,
    icechunk_repo,
    kerchunk_refs,
    netcdf,
    zarr_store,
)

__all__ = ["FORMATS", "Format", "format_of", "open_store"]


@dataclass(frozen=True)
class Format:
    """One archive format: its ``engine`` name, opener, URL suffixes and backend kwargs."""

    engine: str
    open: Callable[..., xr.Dataset]
    suffixes: tuple[str, ...] = ()
    backend_keys: tuple[str, ...] = ()
    description: str = ""


#: every format an archive may name as ``engine`` (the first is the default)
FORMATS: dict[str, Format] = {
    f.engine: f
    for f in (
        Format("zarr", zarr_store.open_archive, (".zarr",), (), "Zarr v2/v3 store, any fsspec URL"),
        Format("h5netcdf", netcdf.open_archive, netcdf.SUFFIXES, netcdf.BACKEND_KEYS,
               "NetCDF-4/HDF5 file, local or any fsspec URL"),
        Format("netcdf4", netcdf.open_archive, (), netcdf.BACKEND_KEYS,
               "NetCDF-3 or NetCDF-4 file, local"),
        Format("cfgrib", grib.open_archive, grib.SUFFIXES, grib.BACKEND_KEYS,
               "GRIB 1/2 file read by cfgrib (ecCodes), local"),
        Format("kerchunk", kerchunk_refs.open_archive, (), (),
               "kerchunk JSON references (reference://) over NetCDF/GRIB/TIFF chunks"),
        Format("icechunk", icechunk_repo.open_archive, (), icechunk_repo.BACKEND_KEYS,
               "Icechunk repository (a branch, tag or snapshot), local"),
    )
}  # fmt: skip


def format_of(url: str, engine: str | None, what: str) -> Format:
    """The format named by ``engine``, else guessed from ``url``'s suffix, else Zarr."""
    if engine not in (None, ""):
        if engine not in FORMATS:
            raise StoreError(
                f"{what}: unknown engine {engine!r}; the known engines are {sorted(FORMATS)}"
            )
        return FORMATS[engine]
    path = url.split("?", 1)[0].rstrip("/").lower()
    for fmt in FORMATS.values():
        if path.endswith(fmt.suffixes) and fmt.suffixes:
            return fmt
    return FORMATS["zarr"]


def open_store(
    url: str | os.PathLike[str],
    *,
    engine: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    backend_kwargs: Mapping[str, Any] | None = None,
    what: str = "archive",
) -> xr.Dataset:
    """Open the archive at ``url`` in its format, lazily, as it is (see the module doc).

    Raises
    ------
    StoreError
        An unknown engine or backend kwarg, a missing file, or an archive the format's
        library cannot read, naming the archive and the fix.
    """
    if not isinstance(url, (str, bytes)) and not hasattr(url, "__fspath__"):
        raise StoreError(f"{what}: url must be a path or URL string, got a {type(url).__name__}")
    url = str(url.__fspath__() if hasattr(url, "__fspath__") else url)
    fmt = format_of(url, engine, what)
    if backend_kwargs is not None and not isinstance(backend_kwargs, Mapping):
        raise StoreError(
            f"{what}: backend_kwargs must be a mapping, got a {type(backend_kwargs).__name__}"
        )
    kwargs = given_options(backend_kwargs) or {}
    check_keys(kwargs, fmt.backend_keys, f"{what}: backend_kwargs of engine {fmt.engine!r}",
               error=StoreError)  # fmt: skip
    try:
        return fmt.open(url, engine=fmt.engine, storage_options=storage_options,
                        backend_kwargs=kwargs, what=what)  # fmt: skip
    except ImportError as err:
        raise StoreError(
            f"{what}: engine {fmt.engine!r} needs {err.name or 'a library'} (pip install "
            f"'corrdiff-xr[formats]') to read '{redact_url(url)}'"
        ) from None
