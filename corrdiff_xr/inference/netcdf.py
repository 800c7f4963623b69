"""The reference's NetCDF layout (PhysicsNeMo's ``generate.py``).

:func:`write_reference_netcdf` writes root ``lat``, ``lon`` (y, x) and ``time`` (int64 hours
since 1990-01-01; minutes, seconds ... when sub-hourly times need them: every time keeps its
full resolution), groups ``input`` (regridded inputs, time x y x), ``truth`` (targets, when
the dataset has them) and ``prediction`` (ensemble x time x y x). For a cftime axis the time
is counted in its calendar, which ``time``'s ``calendar`` names (``standard`` otherwise).
When the prediction has a CF grid-mapping coordinate (:mod:`corrdiff_xr._cf`), every group
holds it with the projection's ``y``/``x`` and names it in its variables' ``grid_mapping``.
It streams one time step at a time into a temporary file renamed into place, and records the
same identity as the Zarr store it was written from
(:data:`corrdiff_xr.inference.store.IDENTITY_ATTR`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from corrdiff_xr._atomic import atomic_path
from corrdiff_xr._cf import GRID_MAPPING, grid_mappings, with_grid_mapping
from corrdiff_xr._outputs import PRODUCT_ATTR, check_output
from corrdiff_xr.data.times import calendar_of, parse_times, to_ns
from corrdiff_xr.dims import LAT, LAT_ATTRS, LON, LON_ATTRS, MEMBER, TIME, X, Y
from corrdiff_xr.inference.store import IDENTITY_ATTR, remove_leftovers

if TYPE_CHECKING:
    import netCDF4

__all__ = ["REFERENCE_TIME_UNITS", "time_encoding", "write_reference_netcdf"]

REFERENCE_TIME_UNITS = "hours since 1990-01-01 00:00:00"
#: the units tried, coarsest first, with their length in nanoseconds
_UNITS = (("hours", 3600 * 10**9), ("minutes", 60 * 10**9), ("seconds", 10**9),
          ("milliseconds", 10**6), ("microseconds", 10**3), ("nanoseconds", 1))  # fmt: skip


def time_encoding(times: np.ndarray) -> tuple[str, np.ndarray]:
    """``(units, int64 values)`` of ``times`` since 1990-01-01 00:00 in their own calendar:
    the reference's hours when they hold every time exactly, else the coarsest unit that
    does (sub-hourly data would otherwise share labels)."""
    ref = parse_times(["1990-01-01"], like=times)
    offsets = to_ns(times) - to_ns(ref)[0]
    for unit, ns in _UNITS:
        if not (offsets % ns).any():
            return f"{unit}{REFERENCE_TIME_UNITS[5:]}", offsets // ns
    raise AssertionError("unreachable: every offset is whole nanoseconds")


def write_reference_netcdf(
    path: str | os.PathLike,
    prediction: xr.Dataset,
    *,
    inputs: xr.Dataset | None = None,
    truth: xr.Dataset | None = None,
    overwrite: bool = False,
    kind: str = "generate",
) -> Path:
    """Write the reference's NetCDF layout, one time step at a time, atomically.

    Parameters
    ----------
    path
        Output ``.nc`` file.
    prediction
        Downscaled Dataset (``member`` dim optional; written as ``ensemble``). Its identity
        record (:data:`IDENTITY_ATTR`, present when it was read from :func:`write_zarr`'s
        store) is kept as a JSON global attribute.
    inputs, truth
        Regridded inputs (time, y, x) and targets (time, y, x), selected at the prediction's
        times; written to the ``input`` and ``truth`` groups when given.
    overwrite, kind
        Replace an existing file only when it is our ``kind`` output and ``overwrite`` is
        set (:func:`corrdiff_xr._outputs.check_output`); ``kind`` is the product marker.
    """
    import netCDF4

    path = Path(path)
    remove_leftovers(path)
    check_output(path, kind=kind, overwrite=overwrite, what="NetCDF file")
    times = prediction[TIME].values
    n_ens = prediction.sizes.get(MEMBER, 1)
    given = {"truth": truth, "prediction": prediction, "input": inputs}
    # every group is on the fine grid: each carries the prediction's grid mapping, if any
    groups = {k: with_grid_mapping(g, prediction) for k, g in given.items() if g is not None}
    with atomic_path(path) as tmp, netCDF4.Dataset(tmp, "w", format="NETCDF4") as f:
        handles = _netcdf_layout(f, prediction, groups)
        f.setncattr(PRODUCT_ATTR, kind)
        for k, v in prediction.attrs.items():
            if k == IDENTITY_ATTR:
                f.setncattr(k, json.dumps(v, sort_keys=True))
            elif k.startswith("corrdiff_") and k != PRODUCT_ATTR:
                f.setncattr(k, v if isinstance(v, (int, float, str)) else str(v))
        units, values = time_encoding(times)
        f[TIME].units = units
        f[TIME][:] = values
        for i in range(len(times)):
            for gname, g in handles.items():
                step = groups[gname].isel({TIME: i}).compute()
                for vname, var in step.data_vars.items():
                    name, values = str(vname), var.values
                    if gname == "prediction":
                        values = values if MEMBER in var.dims else values[None]
                        g[name][0:n_ens, i] = values
                    else:
                        g[name][i] = values
    return path


def _netcdf_layout(
    f: netCDF4.Dataset, prediction: xr.Dataset, groups: dict[str, xr.Dataset]
) -> dict[str, netCDF4.Group]:
    """Dimensions, lat/lon/time and the groups' variables of the reference layout."""
    ny, nx = prediction.sizes[Y], prediction.sizes[X]
    f.createDimension(TIME)
    f.createDimension("ensemble")
    f.createDimension(Y, ny)
    f.createDimension(X, nx)
    for name, attrs in ((LAT, LAT_ATTRS), (LON, LON_ATTRS)):
        v = f.createVariable(name, "f", (Y, X))
        if name in prediction.coords:
            v[:] = np.broadcast_to(prediction[name].values, (ny, nx))
        v.setncatts(dict(attrs))
    tv = f.createVariable(TIME, "i8", (TIME,))
    tv.calendar = calendar_of(prediction[TIME].values)
    handles = {}
    for gname, data in groups.items():
        g = f.createGroup(gname)
        handles[gname] = g
        mappings = _grid_mapping_variables(g, data)
        for vname, var in data.data_vars.items():
            gdims = ("ensemble", TIME, Y, X) if gname == "prediction" else (TIME, Y, X)
            nv = g.createVariable(str(vname), "f", gdims)
            for attr in ("units", "long_name", "standard_name", GRID_MAPPING):
                if attr in var.attrs:
                    nv.setncattr(attr, str(var.attrs[attr]))
            if var.attrs.get(GRID_MAPPING) in mappings:  # so that xarray reads it as a coord
                nv.setncattr("coordinates", var.attrs[GRID_MAPPING])
    f.setncattr("history", str(prediction.attrs.get("history", "")))
    return handles


def _grid_mapping_variables(group: netCDF4.Group, data: xr.Dataset) -> list[str]:
    """Write ``data``'s CF grid-mapping variables into ``group``, with the y, x coordinates
    of the projection they describe; returns their names (none: the layout is unchanged)."""
    mappings = grid_mappings(data)
    for name, var in mappings.items():
        gv = group.createVariable(name, var.dtype.newbyteorder("="), ())  # Zarr's are '<'
        gv.setncatts(dict(var.attrs))
        gv.assignValue(var.values)
    for dim in [d for d in (Y, X) if d in data.coords] if mappings else ():
        cv = group.createVariable(dim, data[dim].dtype.newbyteorder("="), (dim,))
        cv.setncatts(dict(data[dim].attrs))
        cv[:] = data[dim].values
    return list(mappings)
