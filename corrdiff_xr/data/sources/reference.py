"""Convert the reference implementation's dataset layouts into the canonical Zarr layout.

Two layouts of PhysicsNeMo's CorrDiff example are understood:

**HRRR-Mini** (``datasets/hrrrmini.py``): one NetCDF-4 file with groups ``input``
(coarse fields, ``(sample, ny/f, nx/f)``), ``output`` (fine fields, ``(sample, ny, nx)``) and
``invariant`` (``latitude``, ``longitude``, ``elev_mean``, ``lsm_mean`` on the parent grid,
``(NY, NX)``), root variables ``time`` and ``coord`` (``(sample, 2)``: the row/column of each
sample's output window inside the parent grid), plus a ``stats.json`` holding
``{"input"|"output"|"invariant": {name: {"mean", "std"}}}``. The canonical layout has one
fine grid, so the samples of one window are kept (``window=``) and the invariants are
cropped to it. Fine ``y``/``x`` are the parent grid's row/column indices,
coarse ones the centres of the ``f x f`` blocks; ``latitude``/``longitude`` (root or
``invariant`` group, on the parent grid or the window) give ``lat``/``lon``.

**CWB/Taiwan** (``datasets/cwb.py``): a consolidated Zarr group with ``cwb``
``(time, cwb_channel, south_north, west_east)`` targets and ``era5``
``(time, era5_channel, south_north, west_east)`` inputs, names in ``cwb_variable`` /
``era5_variable`` with levels in ``cwb_pressure`` / ``era5_pressure`` (NaN for surface),
statistics ``*_center`` / ``*_scale``, validity masks ``cwb_valid(time)`` and
``era5_valid(time, era5_channel)``, and ``XLAT``/``XLONG``. In that archive ERA5 is already
interpolated to the 2 km grid, so the coarse grid here *is* the fine grid (bilinear
regridding is then the identity); invalid times are dropped as the reference does.

Inputs get the suffix ``_coarse`` so their names never clash with the targets'. Statistics
go to the store's ``stats`` group. Every conversion is written to a temporary sibling path
and renamed into place: a failure leaves nothing at the destination. The store is marked as a
``convert`` product (global attribute ``corrdiff_xr_product``); an existing destination is
replaced only if it is such a store and ``overwrite`` is given (:mod:`corrdiff_xr._outputs`),
never a user's file or directory or another product. The ``corrdiff-xr convert`` command is
:mod:`corrdiff_xr.cli.convert`.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import xarray as xr

from corrdiff_xr.data.stats import stats_dataset
from corrdiff_xr.dims import (
    LAT,
    LAT_ATTRS,
    LAT_COARSE,
    LON,
    LON_ATTRS,
    LON_COARSE,
    TIME,
    X_COARSE,
    Y_COARSE,
    X,
    Y,
)
from corrdiff_xr.errors import CorrDiffError, InputNotFoundError

__all__ = [
    "ConversionError",
    "cwb_to_canonical",
    "hrrr_mini_to_canonical",
]

INPUT_SUFFIX = "_coarse"
#: units of the reference archives' variable names (they carry none themselves)
_UNITS = {
    "temperature": "K", "temperature_2m": "K", "2t": "K", "t2m": "K",
    "eastward_wind": "m s-1", "northward_wind": "m s-1",
    "eastward_wind_10m": "m s-1", "northward_wind_10m": "m s-1",
    "10u": "m s-1", "10v": "m s-1", "u10m": "m s-1", "v10m": "m s-1",
    "geopotential_height": "m", "geopotential": "m2 s-2",
    "maximum_radar_reflectivity": "dBZ", "radar_reflectivity": "dBZ",
    "total_precipitation": "kg m-2", "precipitation": "kg m-2", "tp": "kg m-2",
    "total_column_water_vapour": "kg m-2", "tcwv": "kg m-2",
    "mean_sea_level_pressure": "Pa", "msl": "Pa", "sp": "Pa",
    "elev_mean": "m", "lsm_mean": "1", "orography": "m", "lsm": "1",
}  # fmt: skip


class ConversionError(CorrDiffError, ValueError):
    """The source does not follow the reference layout it was read as."""


# -- helpers ---------------------------------------------------------------------------------
def _cf_attrs(name: str, attrs: Mapping, note: str) -> dict:
    base = name.rstrip("0123456789") if name not in _UNITS else name
    units = attrs.get("units") or _UNITS.get(base) or _UNITS.get(name.lower()) or "unknown"
    long_name = attrs.get("long_name") or f"{name} ({note})"
    return {**attrs, "units": str(units), "long_name": str(long_name)}


def _index_coord(what: str) -> dict:
    return {"units": "1", "long_name": f"{what} grid index", "axis": what.upper()}


def _canonical_coords(
    times: np.ndarray,
    fine: tuple[np.ndarray, ...],
    coarse: tuple[np.ndarray, ...],
) -> dict[str, tuple | np.ndarray]:
    """The canonical coordinates; ``fine``/``coarse`` are ``(y, x, lat, lon)`` of each grid.

    ``y``/``x`` are grid indices (the reference archives have no projection coordinates).
    """
    y, x, lat, lon = fine
    yc, xc, latc, lonc = coarse
    return {
        TIME: times,
        Y: (Y, y, _index_coord("y")),
        X: (X, x, _index_coord("x")),
        Y_COARSE: (Y_COARSE, yc, _index_coord("y")),
        X_COARSE: (X_COARSE, xc, _index_coord("x")),
        LAT: ((Y, X), lat, LAT_ATTRS),
        LON: ((Y, X), lon, LON_ATTRS),
        LAT_COARSE: ((Y_COARSE, X_COARSE), latc, LAT_ATTRS),
        LON_COARSE: ((Y_COARSE, X_COARSE), lonc, LON_ATTRS),
    }


# -- HRRR-Mini ---------------------------------------------------------------------------------
def _read_stats_json(path: str | os.PathLike) -> dict:
    """The reference's stats.json: ``{group: {name: {"mean", "std"}}}``."""
    if not os.path.isfile(path):
        raise InputNotFoundError(
            f"HRRR-Mini statistics {path} not found (pass --stats PATH to the stats.json)"
        )
    try:
        with open(path) as fh:
            raw = json.load(fh)
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise ConversionError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(raw, dict):
        raise ConversionError(f"{path}: expected a JSON object of groups, got {raw!r:.80}")
    return raw


def _group(path: str, group: str) -> xr.Dataset:
    """A NetCDF group opened lazily (dask-backed, the file's own chunks)."""
    try:
        return xr.open_dataset(path, group=group, engine="netcdf4", chunks={})
    except OSError as err:
        raise ConversionError(f"{path}: cannot read NetCDF group {group!r} ({err})") from err


def _find_latlon(path: str, groups: Mapping[str, xr.Dataset]) -> tuple[xr.DataArray, xr.DataArray]:
    for ds in groups.values():
        if "latitude" in ds.variables and "longitude" in ds.variables:
            return ds["latitude"], ds["longitude"]
    raise ConversionError(
        f"{path}: no 'latitude'/'longitude' variables in the root or 'invariant' group; the "
        "canonical layout needs the geographic position of every fine pixel"
    )


def _choose_window(
    path: str, coord: np.ndarray, window: tuple[int, int] | str | None
) -> tuple[int, int]:
    windows, counts = np.unique(coord, axis=0, return_counts=True)
    if window is None:
        if len(windows) == 1:
            return int(windows[0][0]), int(windows[0][1])
        top = ", ".join(
            f"({int(w[0])}, {int(w[1])}): {int(c)}"
            for w, c in sorted(zip(windows, counts), key=lambda wc: -wc[1])[:5]
        )
        raise ConversionError(
            f"{path}: 'coord' places samples in {len(windows)} different windows "
            f"(most used: {top}); the canonical layout has one fine grid, so choose one "
            "with window=(row, col) or window='most_common' (CLI: --window)"
        )
    if window == "most_common":
        best = windows[int(np.argmax(counts))]
        return int(best[0]), int(best[1])
    if isinstance(window, str):
        raise ConversionError(f"window must be (row, col) or 'most_common', got {window!r}")
    chosen = (int(window[0]), int(window[1]))
    if not (coord == np.array(chosen)).all(axis=1).any():
        raise ConversionError(f"{path}: no sample has its window at {chosen}")
    return chosen


def _open_hrrr_root(path: str) -> xr.Dataset:
    """The root group of a HRRR-Mini file, which must hold ``time`` and ``coord``."""
    if not os.path.exists(path):
        raise InputNotFoundError(f"HRRR-Mini file not found: {path}")
    try:
        root = xr.open_dataset(path, engine="netcdf4", chunks={})
    except (OSError, ValueError) as err:
        raise ConversionError(
            f"{path}: not a readable NetCDF-4 file ({err}); HRRR-Mini is one NetCDF file "
            "(a CWB Zarr store is layout 'cwb')"
        ) from err
    for name in ("time", "coord"):
        if name not in root.variables:
            raise ConversionError(f"{path}: root group lacks {name!r} (HRRR-Mini layout)")
    return root


def _coarsening_factor(path: str, inp: xr.Dataset, out: xr.Dataset) -> int:
    """The integer factor between the output (fine) and input (coarse) grids."""
    for label, grp in (("input", inp), ("output", out)):
        if not grp.data_vars:
            raise ConversionError(f"{path}: group {label!r} holds no variables")
        for name, var in grp.data_vars.items():
            if var.ndim != 3:
                raise ConversionError(
                    f"{path}: {label}/{name} has dims {var.dims}, expected (sample, y, x)"
                )
    ny, nx = next(iter(out.data_vars.values())).shape[-2:]
    nyc, nxc = next(iter(inp.data_vars.values())).shape[-2:]
    if ny % nyc or nx % nxc or ny // nyc != nx // nxc:
        raise ConversionError(
            f"{path}: output {ny}x{nx} is not an integer multiple of input {nyc}x{nxc}"
        )
    return ny // nyc


def _window_samples(
    path: str, root: xr.Dataset, coord: np.ndarray, origin: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the samples of the window at ``origin``, in time order, and their times."""
    keep = np.flatnonzero((coord == np.array(origin)).all(axis=1))
    times = np.asarray(root["time"].values)[keep]
    if not np.issubdtype(times.dtype, np.datetime64):
        raise ConversionError(f"{path}: time is not CF-decodable to datetimes ({times.dtype})")
    order = np.argsort(times, kind="stable")
    keep, times = keep[order], times[order].astype("datetime64[ns]")
    if np.any(np.diff(times) == np.timedelta64(0)):
        raise ConversionError(f"{path}: window {origin} holds repeated times")
    return keep, times


def _crop(
    path: str, var: xr.DataArray, origin: tuple[int, int], shape: tuple[int, int]
) -> np.ndarray:
    """A parent-grid field cut to the window ``shape`` at ``origin`` (as is if already cut)."""
    (i0, j0), (ny, nx) = origin, shape
    if var.shape == (ny, nx):  # already on the window
        return np.asarray(var.values)
    if var.ndim != 2 or var.shape[0] < i0 + ny or var.shape[1] < j0 + nx:
        raise ConversionError(
            f"{path}: {var.name} {var.shape} does not contain the window "
            f"rows {i0}:{i0 + ny}, cols {j0}:{j0 + nx}"
        )
    d0, d1 = var.dims
    return np.asarray(var.isel({d0: slice(i0, i0 + ny), d1: slice(j0, j0 + nx)}).values)


def _stat(
    raw_stats: dict[str, Any], stats_path: str | os.PathLike[str], group: str, name: str
) -> tuple[float, float]:
    """``(mean, std)`` of ``group/name`` in the reference's stats.json."""
    entry = raw_stats.get(group)
    entry = entry.get(name) if isinstance(entry, dict) else None
    if not isinstance(entry, dict) or not {"mean", "std"} <= set(entry):
        raise ConversionError(
            f"{stats_path}: no mean/std for {group}/{name} (expected "
            f'{{"{group}": {{"{name}": {{"mean": ..., "std": ...}}}}}}, got {entry!r:.60})'
        )
    try:
        return float(entry["mean"]), float(entry["std"])
    except (TypeError, ValueError) as err:
        raise ConversionError(
            f"{stats_path}: {group}/{name} mean/std must be numbers, got {entry!r:.60}"
        ) from err


def _hrrr_variables(
    out: xr.Dataset,
    inp: xr.Dataset,
    inv: xr.Dataset,
    *,
    keep: np.ndarray,
    crop: Callable[[xr.DataArray], np.ndarray],
    stat: Callable[[str, str], tuple[float, float]],
) -> tuple[dict[str, tuple], dict[str, tuple[float, float]]]:
    """Targets, ``_coarse`` inputs (samples ``keep``) and cropped invariants, with their stats."""
    data_vars: dict[str, tuple] = {}
    stats: dict[str, tuple[float, float]] = {}
    for name, var in ((str(n), v) for n, v in out.data_vars.items()):
        picked = var.isel({var.dims[0]: keep}).data
        data_vars[name] = ((TIME, Y, X), picked, _cf_attrs(name, var.attrs, "fine target"))
        stats[name] = stat("output", name)
    for name, var in ((str(n), v) for n, v in inp.data_vars.items()):
        new = f"{name}{INPUT_SUFFIX}"
        attrs = _cf_attrs(name, var.attrs, "coarse input")
        picked = var.isel({var.dims[0]: keep}).data
        data_vars[new] = ((TIME, Y_COARSE, X_COARSE), picked, attrs)
        stats[new] = stat("input", name)
    for name, var in ((str(n), v) for n, v in inv.data_vars.items()):
        if name in ("latitude", "longitude"):
            continue
        data_vars[name] = ((Y, X), crop(var), _cf_attrs(name, var.attrs, "static"))
        stats[name] = stat("invariant", name)
    return data_vars, stats


def hrrr_mini_to_canonical(
    path: str | os.PathLike,
    stats_path: str | os.PathLike,
    *,
    window: tuple[int, int] | str | None = None,
) -> tuple[xr.Dataset, xr.Dataset]:
    """Read a HRRR-Mini NetCDF (+ stats.json) as a canonical Dataset and its statistics.

    Parameters
    ----------
    path, stats_path
        The reference's ``hrrr_mini_train.nc`` (or alike) and its ``stats.json``.
    window
        HRRR-Mini samples are windows cut from a parent grid at ``coord`` (row, col). The
        canonical layout has one fine grid, so only samples of one window are kept: None (all
        samples must share it), ``(row, col)``, or ``"most_common"``.

    Returns
    -------
    (dataset, stats)
        The dataset is dask-backed: samples are read from the NetCDF only when written.
    """
    path = os.fspath(path)
    root = _open_hrrr_root(path)
    inp, out, inv = (_group(path, g) for g in ("input", "output", "invariant"))
    factor = _coarsening_factor(path, inp, out)
    ny, nx = next(iter(out.data_vars.values())).shape[-2:]
    coord = np.asarray(root["coord"].values).astype(np.int64).reshape(-1, 2)
    i0, j0 = _choose_window(path, coord, window)
    keep, times = _window_samples(path, root, coord, (i0, j0))
    crop = functools.partial(_crop, path, origin=(i0, j0), shape=(ny, nx))

    lat_var, lon_var = _find_latlon(path, {"root": root, "invariant": inv})
    lat, lon = crop(lat_var).astype(np.float64), crop(lon_var).astype(np.float64)
    stat = functools.partial(_stat, _read_stats_json(stats_path), stats_path)
    data_vars, stats = _hrrr_variables(out, inp, inv, keep=keep, crop=crop, stat=stat)

    y = np.arange(i0, i0 + ny, dtype=np.float64)
    x = np.arange(j0, j0 + nx, dtype=np.float64)
    block = (ny // factor, factor, nx // factor, factor)
    coarse = (
        y.reshape(-1, factor).mean(1),
        x.reshape(-1, factor).mean(1),
        lat.reshape(block).mean((1, 3)),
        lon.reshape(block).mean((1, 3)),
    )
    ds = xr.Dataset(
        data_vars,
        coords=_canonical_coords(times, (y, x, lat, lon), coarse),
        attrs={
            "source": os.path.basename(path),
            "converted_from": "HRRR-Mini",
            "coarsening_factor": factor,
            "window": [i0, j0],
            "dropped_samples_outside_window": int(len(coord) - len(keep)),
        },
    )
    return ds, stats_dataset(stats)


# -- CWB / Taiwan ------------------------------------------------------------------------------
def _channel_names(group: xr.Dataset, prefix: str) -> list[str]:
    names = [str(v) for v in np.asarray(group[f"{prefix}_variable"].values)]
    levels = np.full(len(names), np.nan)  # no level array: all surface fields
    if f"{prefix}_pressure" in group.variables:
        levels = np.asarray(group[f"{prefix}_pressure"].values, dtype=np.float64)
    out = [n if np.isnan(p) else f"{n}{int(p)}" for n, p in zip(names, levels)]
    if len(set(out)) != len(out):
        raise ConversionError(f"{prefix}_variable/{prefix}_pressure repeat a channel: {out}")
    return out


#: arrays of the CWB layout: data, channel names, statistics, then coordinates
_CWB_REQUIRED = (
    "cwb",
    "era5",
    "cwb_variable",
    "era5_variable",
    "cwb_center",
    "cwb_scale",
    "era5_center",
    "era5_scale",
    "XLAT",
    "XLONG",
    "time",
)


def _open_cwb(source: str | os.PathLike | xr.Dataset) -> tuple[str, xr.Dataset]:
    """A label for messages and the CWB Dataset, checked for the layout's arrays."""
    label = "<dataset>" if isinstance(source, xr.Dataset) else os.fspath(source)
    if isinstance(source, xr.Dataset):
        src = source
    else:
        if not os.path.exists(label):
            raise InputNotFoundError(f"CWB Zarr store not found: {label}")
        try:
            src = xr.open_zarr(label, consolidated=None)
        except (OSError, ValueError) as err:  # zarr's "no group found" and friends
            raise ConversionError(f"{label}: not a readable Zarr group ({err})") from err
    missing = [n for n in _CWB_REQUIRED if n not in src.variables]
    if missing:
        raise ConversionError(f"{label}: not the CWB layout, missing {missing}")
    for name in ("cwb", "era5"):
        if src[name].ndim != 4:
            raise ConversionError(f"{label}: {name} has dims {src[name].dims}, expected 4")
    return label, src.set_coords([n for n in _CWB_REQUIRED[2:] if n in src.data_vars])


def _valid_times(label: str, src: xr.Dataset, t_dim: str, keep_invalid: bool) -> np.ndarray:
    """Mask of the times that ``cwb_valid`` and every ``era5_valid`` channel accept."""
    valid = np.ones(src.sizes[t_dim], bool)
    if not keep_invalid:
        if "cwb_valid" in src.variables:
            valid &= np.asarray(src["cwb_valid"].values) != 0
        if "era5_valid" in src.variables:
            valid &= np.all(np.asarray(src["era5_valid"].values) != 0, axis=-1)
    if not valid.any():
        raise ConversionError(f"{label}: no valid times (cwb_valid/era5_valid all false)")
    return valid


def _cwb_variables(
    src: xr.Dataset, targets: list[str], inputs: list[str], valid: np.ndarray
) -> tuple[dict[str, tuple], dict[str, tuple[float, float]]]:
    """One variable per ``cwb`` (target) and ``era5`` (``_coarse`` input) channel, and stats."""
    t_dim, c_dim = src["cwb"].dims[:2]
    e_dim = src["era5"].dims[1]
    stats: dict[str, tuple[float, float]] = {}
    data_vars = {}
    centers = {p: np.asarray(src[f"{p}_center"].values, np.float64) for p in ("cwb", "era5")}
    scales = {p: np.asarray(src[f"{p}_scale"].values, np.float64) for p in ("cwb", "era5")}
    for k, name in enumerate(targets):
        var = src["cwb"].isel({c_dim: k}, drop=True).isel({t_dim: valid})
        attrs = _cf_attrs(name, {}, "CWB/TReAD 2 km target")
        data_vars[name] = ((TIME, Y, X), var.data, attrs)
        stats[name] = (centers["cwb"][k], scales["cwb"][k])
    for k, name in enumerate(inputs):
        var = src["era5"].isel({e_dim: k}, drop=True).isel({t_dim: valid})
        attrs = _cf_attrs(name, {}, "ERA5 interpolated to the 2 km grid")
        data_vars[f"{name}{INPUT_SUFFIX}"] = ((TIME, Y_COARSE, X_COARSE), var.data, attrs)
        stats[f"{name}{INPUT_SUFFIX}"] = (centers["era5"][k], scales["era5"][k])
    return data_vars, stats


def cwb_to_canonical(
    source: str | os.PathLike | xr.Dataset, *, keep_invalid: bool = False
) -> tuple[xr.Dataset, xr.Dataset]:
    """Read a CWB/Taiwan Zarr (reference layout) as a canonical Dataset and its statistics.

    Parameters
    ----------
    source
        Path of the consolidated Zarr group, or the Dataset already opened from it.
    keep_invalid
        Keep times flagged invalid by ``cwb_valid`` / ``era5_valid`` (dropped by default,
        as the reference's loader does).

    Returns
    -------
    (dataset, stats)
        The dataset is dask-backed (nothing is read until written).
    """
    label, src = _open_cwb(source)
    targets, inputs = _channel_names(src, "cwb"), _channel_names(src, "era5")
    t_dim, _, ydim, xdim = map(str, src["cwb"].dims)
    valid = _valid_times(label, src, t_dim, keep_invalid)
    data_vars, stats = _cwb_variables(src, targets, inputs, valid)

    lat = np.asarray(src["XLAT"].values, np.float64)
    lon = np.asarray(src["XLONG"].values, np.float64)
    y = np.arange(src.sizes[ydim], dtype=np.float64)
    x = np.arange(src.sizes[xdim], dtype=np.float64)
    times = np.asarray(src["time"].values)
    if not np.issubdtype(times.dtype, np.datetime64):
        raise ConversionError(f"{label}: time is not decodable to datetimes ({times.dtype})")
    # ERA5 is already on the 2 km grid: the coarse grid is the fine one
    grid = (y, x, lat, lon)
    ds = xr.Dataset(
        data_vars,
        coords=_canonical_coords(times[valid].astype("datetime64[ns]"), grid, grid),
        attrs={
            "source": os.path.basename(label),
            "converted_from": "CWB",
            "coarsening_factor": 1,
            "dropped_invalid_times": int((~valid).sum()),
        },
    )
    return ds, stats_dataset(stats)
