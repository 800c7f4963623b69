"""GRIB 1/2 files through cfgrib (ecCodes), local files only.

cfgrib would write an index file (``.idx``) beside the GRIB file, which may be read-only or
shared: it is never written (``indexpath=""``), and ``indexpath`` is no backend kwarg here.
Messages that do not fit one hypercube are refused (``errors="raise"``), where cfgrib would
log them and drop their variables.
Forecast layouts (``time`` and ``step``) are adopted by :mod:`~corrdiff_xr.data.sources.native`;
``time_dims=["valid_time"]`` indexes on valid times instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import xarray as xr

from corrdiff_xr.data.sources.formats._common import (
    read_errors,
    remote_only_here,
    with_loaded_coords,
)

#: suffixes taken as GRIB when no engine is named
SUFFIXES = (".grib", ".grib1", ".grib2", ".grb", ".grb2")
#: ``backend_kwargs`` passed on to cfgrib: which messages (``{"shortName": "2t"}``, one
#: ``typeOfLevel``) and the time dims (``["valid_time"]``)
BACKEND_KEYS = ("filter_by_keys", "time_dims")


def open_archive(
    url: str,
    *,
    engine: str,
    storage_options: Mapping[str, Any] | None,
    backend_kwargs: Mapping[str, Any],
    what: str,
) -> xr.Dataset:
    """The GRIB messages of one hypercube (a ``filter_by_keys`` picks one), lazily."""
    path = remote_only_here(url, what, engine, "GRIB file")
    kwargs = dict(backend_kwargs)
    if "time_dims" in kwargs:
        kwargs["time_dims"] = tuple(kwargs["time_dims"])
    hint = (
        "; a file holding several hypercubes (levels, steps) needs backend_kwargs "
        "{'filter_by_keys': {'typeOfLevel': ...}}"
    )
    with read_errors(url, what, "GRIB file", hint):
        import cfgrib  # noqa: F401  (an ImportError names the missing package)

        ds = xr.open_dataset(
            str(path),
            engine="cfgrib",
            chunks={},
            backend_kwargs={**kwargs, "indexpath": "", "errors": "raise"},
        )
        return with_loaded_coords(ds)
