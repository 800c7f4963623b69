"""Native archives adopted as they are: CF axes found from metadata, renamed to the layout's.

A coarse archive in ERA5 conventions (``time, latitude, longitude``, latitude descending,
longitude 0..360, packed int16) or a km-scale archive on a rotated or projected grid (``rlat,
rlon`` or ``y, x`` with 2-D ``lat``/``lon`` and a grid-mapping variable) is turned into one
side of the canonical layout (:mod:`corrdiff_xr.data.layout`) by :func:`adopt`, lazily:

* **Axes from CF metadata, not names**, as cf-xarray reads it (``ds.cf.axes``,
  ``ds.cf.coordinates``). A dimension's coordinate is the time axis when it holds datetimes
  (or cf-xarray finds it as ``T``/``time``: ``axis: T``, ``standard_name: time`` ...); it is
  the Y (X) axis when cf-xarray finds it as ``Y`` (``X``: ``axis``, ``standard_name``
  ``grid_latitude``/``projection_y_coordinate`` ...), else as ``latitude`` (``longitude``:
  that standard name or units of degrees north/east). A dim without a coordinate is a Y/X
  axis when a 2-D latitude/longitude coordinate spans it.
  Other dims of length one (``height``, ``level``, ``step``) are squeezed, with a note; longer
  ones are refused, naming the dim and the ``select`` that would pick one level.
* **Forecasts** (cfgrib's ``step`` or ``time`` + ``step`` layouts) are put on their valid
  time, found by CF standard name, with the lead kept as the coordinate ``lead_time``
  (:mod:`corrdiff_xr.data.sources.forecast`).
* **Orientation is kept**: descending latitude stays descending (regridding handles either
  order), so outputs come back in the archive's own orientation. Longitudes are unwrapped
  around the fine domain when the pair is built (:mod:`corrdiff_xr.data.archives`).
* **Grid mappings and bounds** (``ds.cf.grid_mapping_names``, ``ds.cf.bounds``, and
  variables named ``*_bnds``/``*_bounds`` that nothing names): a grid-mapping variable becomes a scalar
  coordinate (kept, and written back to outputs as every generated variable's
  ``grid_mapping``); a field's own mapping is the one its ``grid_mapping`` names, in CF's
  short or extended form (read by cf-xarray), else the archive's first. The fine archive's 1-D bounds (``time_bnds``, ``rlat_bnds`` ...) become
  the coordinates ``time_bnds``, ``y_bnds``, ``x_bnds`` on dims ``(axis, bnds)`` (lazily,
  named by the axis' ``bounds``); other bounds, and those of the coarse and static
  archives, are dropped with a note.
* **Values**: packed integers are decoded by xarray on opening (``scale_factor``/``add_offset``);
  a time-varying variable still holding raw integers is refused. A missing ``long_name`` is
  taken from ``standard_name`` or the name; a missing ``units`` is an error.
* **Geographic positions** (:func:`corrdiff_xr.data.grids.place`): every grid is placed by
  its CRS (a CF grid mapping, or cfgrib's ``GRIB_*`` attributes) and coordinates, never by
  array index. Index dims with 2-D latitude/longitude (cfgrib's layout) get projection
  coordinates computed through the CRS; 2-D ``lat``/``lon`` are taken from the archive or
  computed from its axes. A coarse archive's CRS is kept as the scalar coordinate
  ``crs_coarse`` for the regridding; a fine one from ``GRIB_*`` attributes becomes the CF grid
  mapping ``crs``. A grid with bare index dims and no latitude/longitude is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import cf_xarray  # noqa: F401  (registers the .cf accessor)
import numpy as np
import xarray as xr

from corrdiff_xr._cf import COARSE_GRID_MAPPING, grid_mapping_of, grid_mapping_variables
from corrdiff_xr.data.grids import Placement, place
from corrdiff_xr.data.layout import (
    DataError,
    DimensionError,
    DTypeError,
    MetadataError,
    MissingVariableError,
)
from corrdiff_xr.data.sources.forecast import LEAD_TIME, lead_time_labels, on_valid_time
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

__all__ = ["Adopted", "adopt", "describe_placement", "find_axes"]

Grid = Literal["coarse", "fine", "static"]

#: cf-xarray keys per axis, strongest first: its axes (``axis``, projection or rotated standard
#: names) before its geographic coordinates (``latitude`` standard name or units)
_CF_KEYS = (
    ("T", "T"),
    ("time", "T"),
    ("Y", "Y"),
    ("X", "X"),
    ("latitude", "Y"),
    ("longitude", "X"),
)
_GEOGRAPHIC = {"Y": "latitude", "X": "longitude"}
_DIMS = {"coarse": (Y_COARSE, X_COARSE), "fine": (Y, X), "static": (Y, X)}


@dataclass(frozen=True)
class Adopted:
    """An archive on canonical dims; ``notes`` says what was changed to get there."""

    dataset: xr.Dataset
    notes: tuple[str, ...]
    grid_mapping: str | None


def _cf_axes(ds: xr.Dataset) -> dict[str, str]:
    """``{coordinate name: "T" | "Y" | "X"}`` for the coordinates cf-xarray recognises."""
    found: dict[str, str] = {}
    keys = {**ds.cf.coordinates, **ds.cf.axes}
    for key, axis in _CF_KEYS:
        for name in sorted(map(str, keys.get(key, ()))):
            found.setdefault(name, axis)
    return found


def _axis_of(coord: xr.DataArray, cf_axes: Mapping[str, str]) -> str | None:
    """``"T"``, ``"Y"``, ``"X"`` or None for a 1-D dim coordinate: datetimes are time whatever
    their attributes say, the rest is cf-xarray's reading of them."""
    from corrdiff_xr.data.times import is_cftime

    if np.issubdtype(coord.dtype, np.datetime64) or is_cftime(coord.values[:1]):
        return "T"
    return cf_axes.get(str(coord.name))


def _geographic_2d(ds: xr.Dataset, kind: str) -> str | None:
    """Name of a 2-D coordinate holding geographic latitude (``kind="Y"``) or longitude."""
    found = set(map(str, ds.cf.coordinates.get(_GEOGRAPHIC[kind], ())))
    return next((str(n) for n, c in ds.coords.items() if c.ndim == 2 and n in found), None)


def find_axes(ds: xr.Dataset, dims: tuple, *, what: str) -> dict[str, str]:
    """``{"T": dim, "Y": dim, "X": dim}`` among ``dims`` (T may be absent), from CF metadata.

    Raises
    ------
    DimensionError
        Two dims claim one axis, or no dim is the Y or X axis (naming the fix).
    """
    found: dict[str, str] = {}
    cf_axes = _cf_axes(ds)
    for dim in dims:
        axis = _axis_of(ds[dim], cf_axes) if dim in ds.coords and ds[dim].ndim == 1 else None
        if axis is None:
            continue
        if axis in found:
            raise DimensionError(
                f"{what}: dims '{found[axis]}' and '{dim}' both look like the {axis} axis; "
                f"select one value of the other (select={{'{dim}': ...}})"
            )
        found[axis] = str(dim)
    if "Y" not in found or "X" not in found:  # index dims spanned by 2-D lat/lon
        lat = _geographic_2d(ds, "Y")
        if lat is not None and all(d in dims for d in ds[lat].dims):
            found.setdefault("Y", str(ds[lat].dims[0]))
            found.setdefault("X", str(ds[lat].dims[1]))
    bare = [str(d) for d in dims if d not in ds.coords and d not in found.values()]
    if ("Y" not in found or "X" not in found) and len(bare) >= 2:
        raise DimensionError(
            f"{what}: dims {tuple(bare)} are bare indices with no coordinate values and no 2-D "
            "latitude/longitude; add latitude/longitude coordinates (standard_name 'latitude'/"
            "'longitude') or projection coordinates with a CF grid mapping, so its cells can be "
            "placed: grids are never paired by index"
        )
    for axis, kind in (("Y", "latitude"), ("X", "longitude")):
        if axis not in found:
            raise DimensionError(
                f"{what}: no {axis} ({kind}) axis among the dims {tuple(map(str, dims))}; give "
                f"its coordinate the CF attribute axis='{axis}' or standard_name='{kind}' "
                f"(or 'grid_{kind}', 'projection_{axis.lower()}_coordinate')"
            )
    return found


def _metadata_vars(ds: xr.Dataset) -> tuple[list[str], list[str]]:
    """Names of grid-mapping variables (in the archive's order: the first is the default)
    and of bounds variables in ``ds``; bounds that no variable names are found by name, so
    that they are dropped rather than taken for a field."""
    mappings = list(grid_mapping_variables(ds))
    bounds = {str(b) for names in ds.cf.bounds.values() for b in names}
    bounds |= {str(n) for n in ds.variables if str(n).endswith(("_bnds", "_bounds"))}
    return mappings, sorted(b for b in bounds if b in ds.variables and b not in mappings)


def _pick_variables(
    ds: xr.Dataset, variables: Mapping[str, str] | None, grid: Grid, what: str
) -> dict[str, str]:
    """``{native name: canonical name}``: the map given, else every field of the grid."""
    if variables:
        missing = [n for n in variables if n not in ds.data_vars]
        if missing:
            raise MissingVariableError(
                f"{what}: variable(s) {missing} not found; it has {sorted(map(str, ds.data_vars))}"
            )
        return {str(k): str(v) for k, v in variables.items()}
    minimum = 2 if grid == "static" else 3
    picked = {str(n): str(n) for n, v in ds.data_vars.items() if v.ndim >= minimum}
    if not picked:
        raise MissingVariableError(
            f"{what}: no gridded variable in {sorted(map(str, ds.data_vars))}"
        )
    return picked


def _squeeze(
    var: xr.DataArray, keep: set[str], name: str, what: str, notes: list[str]
) -> xr.DataArray:
    for dim in [d for d in var.dims if d not in keep]:
        if var.sizes[dim] != 1:
            raise DimensionError(
                f"{what}: variable '{name}' has dim '{dim}' of size {var.sizes[dim]}, which is "
                f"neither time nor a horizontal axis; pick one value with select={{'{dim}': "
                "VALUE}"
            )
        value = var[dim].values[0] if dim in var.coords else 0
        notes.append(f"{what}: '{name}': squeezed singleton dim '{dim}' (= {value})")
        var = var.isel({dim: 0}, drop=True)
    return var


def _check_values(var: xr.DataArray, name: str, grid: Grid, what: str, notes: list[str]) -> None:
    if grid != "static" and not np.issubdtype(var.dtype, np.floating):
        packed = "scale_factor" in var.encoding or "scale_factor" in var.attrs
        raise DTypeError(
            f"{what}: variable '{name}' holds raw {var.dtype} values"
            + (
                " (packed, but not decoded: open it with mask_and_scale=True)"
                if packed
                else "; store it as floats, or packed with scale_factor/add_offset attributes"
            )
        )
    if not str(var.attrs.get("units", "")).strip():
        raise MetadataError(
            f"{what}: variable '{name}' has no 'units' attribute; set it in the archive "
            f"(e.g. ds['{name}'].attrs['units'] = 'K')"
        )
    if not str(var.attrs.get("long_name", "")).strip():
        var.attrs["long_name"] = str(var.attrs.get("standard_name") or name)
        notes.append(f"{what}: '{name}': long_name taken from {var.attrs['long_name']!r}")


def _grid_coords(
    ds: xr.Dataset, axes: dict[str, str], grid: Grid, mapping: str | None, attrs: Mapping, what: str
) -> tuple[dict[str, Any], Placement]:
    """1-D grid coordinates on canonical dims and the 2-D geographic ones, placed by
    :func:`corrdiff_xr.data.grids.place` (never by array index)."""
    ydim, xdim = _DIMS[grid]
    placed = place(
        ds, axes["Y"], axes["X"], lat=_geographic_2d(ds, "Y"), lon=_geographic_2d(ds, "X"),
        mapping=ds[mapping].attrs if mapping else None, attrs=attrs, what=what,
    )  # fmt: skip
    coords: dict[str, Any] = {
        ydim: (ydim, np.asarray(placed.y[0]), placed.y[1]),
        xdim: (xdim, np.asarray(placed.x[0]), placed.x[1]),
    }
    lat_name, lon_name = (LAT_COARSE, LON_COARSE) if grid == "coarse" else (LAT, LON)
    coords[lat_name] = ((ydim, xdim), np.asarray(placed.lat, np.float64), LAT_ATTRS)
    coords[lon_name] = ((ydim, xdim), np.asarray(placed.lon, np.float64), LON_ATTRS)
    return coords, placed


def describe_placement(ds: xr.Dataset) -> str:
    """How each grid of an archive is placed: its CRS and where its coordinates come from."""
    mappings, _ = _metadata_vars(ds)
    lines, seen = ["placement (grids are paired by position, never by array index):"], set()
    for name, var in ds.data_vars.items():
        if var.ndim < 2 or name in mappings:
            continue
        try:
            axes = find_axes(ds, tuple(var.dims), what=f"'{name}'")
            if (axes["Y"], axes["X"]) in seen:
                continue
            seen.add((axes["Y"], axes["X"]))
            own = [m for m in grid_mapping_of(ds, str(name)) if m in mappings]
            mapping = own[0] if own else (mappings[0] if mappings else None)
            placed = place(
                ds, axes["Y"], axes["X"], lat=_geographic_2d(ds, "Y"), lon=_geographic_2d(ds, "X"),
                mapping=ds[mapping].attrs if mapping else None, attrs=var.attrs, what=f"'{name}'",
            )  # fmt: skip
            lines.append(f"  grid ({axes['Y']}, {axes['X']}) of '{name}': {placed.how}")
        except DataError as err:
            lines.append(f"  grid of '{name}': cannot be placed: {err}")
    return "\n".join(lines)


def _bounds(
    ds: xr.Dataset, names: list[str], axes: dict, coords: dict, grid: Grid, what: str, notes: list
) -> dict[str, Any]:
    """The fine archive's 1-D bounds as ``(axis, bnds)`` coordinates; the rest dropped."""
    canonical = {axes.get("T"): TIME, axes["Y"]: Y, axes["X"]: X}
    kept, out = [], {}
    for name in names:
        var = ds[name]
        dim = var.dims[0] if var.ndim == 2 else None
        if grid != "fine" or dim not in canonical or dim is None or var.shape[1] != 2:
            continue
        axis = canonical[dim]
        out[f"{axis}_bnds"] = ((axis, "bnds"), var.data, dict(var.attrs))
        dims, values, attrs = coords[axis]
        coords[axis] = (dims, values, {**attrs, "bounds": f"{axis}_bnds"})
        kept.append(name)
    dropped = [n for n in names if n not in kept]
    if kept:
        notes.append(f"{what}: bounds {kept} kept as {sorted(out)}")
    if dropped:
        notes.append(f"{what}: dropped bounds variable(s) {dropped}")
    return out


def adopt(
    ds: xr.Dataset,
    *,
    grid: Grid,
    variables: Mapping[str, str] | None = None,
    select: Mapping[str, Any] | None = None,
    what: str = "archive",
) -> Adopted:
    """One side of a pair from a native archive (see the module docstring), lazily.

    Parameters
    ----------
    ds
        The archive, opened lazily (:func:`corrdiff_xr.data.open_dataset`).
    grid
        ``"coarse"`` (inputs: dims ``time, y_coarse, x_coarse``), ``"fine"`` (targets: ``time,
        y, x``) or ``"static"`` (``y, x``, on the static archive's own grid).
    variables
        ``{native name: canonical name}``; None takes every gridded variable, names unchanged.
    select
        Values to select before adopting (``{"level": 850}``), by label.
    what
        How messages name the archive.

    Raises
    ------
    DataError
        A subclass naming the archive, the variable or dim, and the fix.
    """
    notes: list[str] = []
    if select:
        unknown = [k for k in select if k not in ds.dims and k not in ds.coords]
        if unknown:
            raise DimensionError(f"{what}: cannot select on {unknown}: dims are {tuple(ds.dims)}")
        ds = ds.sel(dict(select))
    if grid != "static":
        ds = on_valid_time(ds, what=what, notes=notes)
    mappings, bounds = _metadata_vars(ds)
    picked = _pick_variables(ds.drop_vars(bounds + mappings), variables, grid, what)
    first = ds[next(iter(picked))]
    axes = find_axes(ds, tuple(first.dims), what=what)
    if grid != "static" and "T" not in axes:
        raise DimensionError(
            f"{what}: variable '{first.name}' has no time axis among its dims {first.dims}; "
            "give its time coordinate datetimes, or axis='T'"
        )
    native_dims = [axes[a] for a in ("T", "Y", "X") if a in axes and grid != "static"]
    native_dims = native_dims if grid != "static" else [axes["Y"], axes["X"]]
    canonical = (TIME, *_DIMS[grid]) if grid != "static" else _DIMS[grid]
    named = {m for n in picked for m in grid_mapping_of(ds, n)}
    used = [m for m in mappings if m in named]
    mapping = used[0] if used else (mappings[0] if mappings else None)
    coords, placed = _grid_coords(ds, axes, grid, mapping, first.attrs, what)
    notes.append(f"{what}: placed by {placed.how}")
    mapping_attrs = dict(ds[mapping].attrs) if mapping else placed.mapping_attrs
    if mapping is None and mapping_attrs is not None:  # a CRS from GRIB_* attributes
        mapping = "crs" if "crs" not in ds.variables else "crs_grid"
    out = {}
    for native, name in picked.items():
        var = _squeeze(ds[native], set(native_dims), native, what, notes)
        missing = [d for d in native_dims if d not in var.dims]
        if missing:
            raise DimensionError(
                f"{what}: variable '{native}' has dims {var.dims}; expected it on "
                f"{tuple(native_dims)} like '{first.name}'"
            )
        var = var.transpose(*native_dims).drop_vars(list(var.coords))
        _check_values(var, native, grid, what, notes)
        attrs = {k: v for k, v in var.attrs.items() if k not in ("coordinates", "grid_mapping")}
        if mapping is not None and grid != "coarse":
            attrs["grid_mapping"] = mapping
        out[name] = xr.Variable(canonical, var.data, attrs)
    if grid != "static":
        coords[TIME] = (TIME, ds[axes["T"]].values, dict(ds[axes["T"]].attrs))
        lead = lead_time_labels(ds, axes["T"], ds.sizes[axes["T"]])
        if lead is not None:
            coords[LEAD_TIME] = (TIME, *lead)
    coords.update(_bounds(ds, bounds, axes, coords, grid, what, notes))
    if mapping is not None and grid != "coarse":
        coords[mapping] = ((), np.int32(0), mapping_attrs)
    elif mapping_attrs is not None:  # the coarse grid's CRS, read by the regridding
        coords[COARSE_GRID_MAPPING] = ((), np.int32(0), mapping_attrs)
    adopted = xr.Dataset(out, coords=coords)
    return Adopted(adopted, tuple(notes), mapping if grid != "coarse" else None)
