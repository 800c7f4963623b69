"""A user's coarse archive on a CorrDiff package's own grids, lazily.

A published package fixes its coarse grid (``input_grid``), its fine grid (``output_grid``),
its static fields (``invariants``) and its statistics; the user brings an archive in its own
names and grid (ERA5/ARCO or cfgrib names, latitude descending, longitudes 0..360 or
-180..180, possibly global). :func:`package_pair` builds the canonical layout
(:mod:`corrdiff_xr.data.layout`) from them, reading coordinates only:

1. each package input is found in the archive through its selector
   (:func:`corrdiff_xr.data.names.candidates`: a ``name_map`` entry, else the package name,
   the ERA5/ARCO name, the cfgrib name), its pressure level picked (hPa, or Pa on ``plev``),
   length-one dims squeezed, a scalar time made a dim;
2. its values are **taken at the package's input grid points**: the archive's own values,
   where every point is one of the archive's (to :data:`EXACT_TOLERANCE` of a cell, with the
   archive's longitude convention and orientation undone), so the inputs equal what the
   package was trained on; an archive without those points is refused unless
   ``regrid="bilinear"``, which interpolates (xarray ``interp``, lazily) from a window of the
   archive around the points, across the date line of a global archive;
3. the coarse grid of the pair is the package's input grid (``y_coarse``/``x_coarse`` =
   latitude/longitude with their ``standard_name``, so regridding pairs the grids by
   geography; a 2-D curvilinear input grid is placed by its ``lat_coarse``/``lon_coarse``),
   the fine grid the output grid, the static fields the invariants, the statistics the
   codec's.

Inputs keep the archive's ``units`` (the codec converts them to the package's when it
encodes, :mod:`corrdiff_xr.units`): a variable without ``units`` is refused, not guessed.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import xarray as xr

from corrdiff_xr.data import names as _names
from corrdiff_xr.data.layout import (
    CoordinateError,
    CoverageError,
    DimensionError,
    MetadataError,
    MissingVariableError,
    TimeAxisError,
)
from corrdiff_xr.data.pair import DownscalingData, open_pair
from corrdiff_xr.data.stats import stats_dataset
from corrdiff_xr.dims import LAT, LAT_COARSE, LON, LON_COARSE, TIME, X_COARSE, Y_COARSE, X, Y


class CodecLike(Protocol):
    """What is read of a :class:`corrdiff_xr.codec.Codec` (a higher layer, not imported);
    read-only, so frozen dataclasses match."""

    @property
    def inputs(self) -> tuple[str, ...]: ...
    @property
    def targets(self) -> tuple[str, ...]: ...
    @property
    def static(self) -> tuple[str, ...]: ...
    @property
    def stats(self) -> Mapping[str, tuple[float, float]]: ...
    @property
    def attrs(self) -> Mapping[str, Mapping[str, str]]: ...


__all__ = ["EXACT_TOLERANCE", "REGRID_CHOICES", "open_as_pair", "package_pair", "with_truth"]

#: a package point is an archive point when within this fraction of the archive's cell
#: (float32 coordinates at 0.1 degrees are off by up to ~1e-5 degrees)
EXACT_TOLERANCE = 1e-3
#: values of ``regrid``: None (exact points only) or "bilinear"
REGRID_CHOICES = (None, "bilinear")
#: dataset attribute listing what pairing did (as :mod:`corrdiff_xr.data.archives` writes)
_NOTES_ATTR = "corrdiff_xr_pairing"


# -- the package's grids ----------------------------------------------------------------------
def _input_points(grid: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The package's input-grid latitude/longitude: 1-D (rectilinear) or 2-D (curvilinear)."""
    for name in (LAT, LON):
        if name not in grid.variables:
            raise MissingVariableError(
                f"package input grid: no '{name}' (it has {sorted(map(str, grid.variables))}); "
                "it needs 'lat' and 'lon', 1-D or 2-D"
            )
    lat, lon = (np.asarray(grid[n].values, np.float64) for n in (LAT, LON))
    if lat.ndim == 2 and lon.shape == lat.shape:
        rows_share_lat = np.allclose(lat, lat[:, :1], rtol=0, atol=1e-9)
        cols_share_lon = np.allclose(lon, lon[:1, :], rtol=0, atol=1e-9)
        if rows_share_lat and cols_share_lon:  # rectilinear written as 2-D
            lat, lon = lat[:, 0], lon[0, :]
    if not ((lat.ndim == lon.ndim == 1) or (lat.ndim == 2 and lat.shape == lon.shape)):
        raise CoordinateError(
            f"package input grid: 'lat' {lat.shape} and 'lon' {lon.shape} are neither two "
            "1-D axes nor two 2-D fields of one shape"
        )
    for name, values in ((LAT, lat), (LON, lon)):
        if not np.isfinite(values).all():
            raise CoordinateError(f"package input grid: '{name}' holds NaN or inf")
        if values.ndim == 1 and values.size > 1 and not np.all(np.diff(values) > 0):
            raise CoordinateError(
                f"package input grid: 1-D '{name}' is not strictly increasing; the package's "
                "grid file is damaged"
            )
    return lat, lon


def _coarse_coords(lat: np.ndarray, lon: np.ndarray) -> dict[str, Any]:
    """``y_coarse``/``x_coarse`` and ``lat_coarse``/``lon_coarse`` of the package's input grid."""
    if lat.ndim == 1:
        lat2, lon2 = np.meshgrid(lat, lon, indexing="ij")
        return {
            Y_COARSE: (Y_COARSE, lat, {"standard_name": "latitude", "units": "degrees_north"}),
            X_COARSE: (X_COARSE, lon, {"standard_name": "longitude", "units": "degrees_east"}),
            LAT_COARSE: ((Y_COARSE, X_COARSE), lat2, {"units": "degrees_north"}),
            LON_COARSE: ((Y_COARSE, X_COARSE), lon2, {"units": "degrees_east"}),
        }
    ny, nx = lat.shape  # curvilinear: index axes, placed by their latitude/longitude
    return {
        Y_COARSE: (Y_COARSE, np.arange(ny), {"long_name": "input grid row"}),
        X_COARSE: (X_COARSE, np.arange(nx), {"long_name": "input grid column"}),
        LAT_COARSE: ((Y_COARSE, X_COARSE), lat, {"units": "degrees_north"}),
        LON_COARSE: ((Y_COARSE, X_COARSE), lon, {"units": "degrees_east"}),
    }


def _fine_coords(grid: xr.Dataset) -> dict[str, xr.DataArray | xr.Variable]:
    """``y``, ``x`` (1-D) and ``lat``, ``lon`` (``(y, x)``) of the package's output grid."""
    for name in (LAT, LON):
        if name not in grid.variables or grid[name].dims != (Y, X):
            found = grid[name].dims if name in grid.variables else "absent"
            raise CoordinateError(
                f"package output grid: '{name}' must be 2-D on ('y', 'x') (it is {found}); "
                "the package reader gives it so"
            )
    coords: dict[str, xr.DataArray | xr.Variable] = {}
    for dim in (Y, X):
        if dim in grid.coords and grid[dim].dims == (dim,):
            coords[dim] = grid[dim]
        else:  # no axis values: index axes (the fine grid is placed by its lat/lon)
            coords[dim] = xr.DataArray(
                np.arange(grid.sizes[dim]), dims=dim, attrs={"long_name": f"{dim} index"}
            )
    for name in (LAT, LON):
        coords[name] = grid[name].variable
    return coords


def _invariants(
    invariants: xr.Dataset | None,
    codec: CodecLike,
    fine: Mapping[str, xr.DataArray | xr.Variable],
) -> dict[str, xr.Variable]:
    """The codec's static fields from ``invariants``, checked to be on the output grid."""
    shape = (fine[Y].size, fine[X].size)
    out = {}
    for name in codec.static:
        if invariants is None or name not in invariants.data_vars:
            have = sorted(map(str, invariants.data_vars)) if invariants is not None else []
            raise MissingVariableError(
                f"package invariant '{name}' is not in the invariants (they have {have})"
            )
        var = invariants[name]
        if var.dims != (Y, X) or var.shape != shape:
            raise DimensionError(
                f"package invariant '{name}' has dims {var.dims} {var.shape}; expected "
                f"('y', 'x') {shape}, the output grid's"
            )
        for dim in (Y, X):
            if dim in var.coords and not np.allclose(var[dim].values, fine[dim].values):
                raise CoordinateError(
                    f"package invariant '{name}': its '{dim}' differs from the output grid's"
                )
        attrs = dict(var.attrs)
        known = codec.attrs.get(name, {})
        # the package's own fields, used as it ships them: no units is no conversion
        attrs["units"] = attrs.get("units") or known.get("units") or _names.units_of(name) or "1"
        attrs.setdefault("long_name", known.get("long_name") or _names.long_name(name) or name)
        out[name] = xr.Variable((Y, X), var.data, attrs)
    return out


# -- values at the package's points -----------------------------------------------------------
def _cell(values: np.ndarray) -> float:
    return float(np.median(np.abs(np.diff(values)))) if values.size > 1 else 1.0


def _wrap(values: np.ndarray) -> np.ndarray:
    return (values + 180.0) % 360.0 - 180.0


def _match(
    source: np.ndarray, target: np.ndarray, *, periodic: bool
) -> tuple[np.ndarray, None] | tuple[None, float]:
    """Positions of ``target`` in ``source`` (longitudes equal modulo 360), or None and the
    first target missing from ``source``."""
    tol = EXACT_TOLERANCE * _cell(source)
    key, t = (np.mod(source, 360.0), np.mod(target, 360.0)) if periodic else (source, target)
    order = np.argsort(key, kind="stable")
    ks, n = key[order], key.size
    pos = np.searchsorted(ks, t)
    below, above = ((c % n if periodic else np.clip(c, 0, n - 1)) for c in (pos - 1, pos))
    d_below, d_above = (
        np.abs(_wrap(ks[c] - t)) if periodic else np.abs(ks[c] - t) for c in (below, above)
    )
    best = np.where(d_above < d_below, above, below)
    dist = np.minimum(d_above, d_below)
    if np.all(dist <= tol):
        return order[best], None
    return None, float(target[np.argmax(dist > tol)])


def _indexers(iy: np.ndarray, ix: np.ndarray) -> dict[str, xr.DataArray]:
    if iy.ndim == 1:  # outer: rows x columns
        return {"lat": xr.DataArray(iy, dims=Y_COARSE), "lon": xr.DataArray(ix, dims=X_COARSE)}
    dims = (Y_COARSE, X_COARSE)  # pointwise
    return {"lat": xr.DataArray(iy, dims=dims), "lon": xr.DataArray(ix, dims=dims)}


def _window(
    var: xr.DataArray, lat: np.ndarray, lon: np.ndarray, what: str
) -> tuple[xr.DataArray, float, tuple[float, float]]:
    """A window of the archive around the points: latitude ascending, longitudes unwrapped
    about the points' centre (a global archive padded by one column each side); that
    centre, and the window's longitude range relative to it."""
    alat, alon = var["lat"].values.astype(np.float64), var["lon"].values.astype(np.float64)
    dy, dx = _cell(alat), _cell(alon)
    tol_y, tol_x = EXACT_TOLERANCE * dy, EXACT_TOLERANCE * dx
    if lat.min() < alat.min() - tol_y or lat.max() > alat.max() + tol_y:
        raise CoverageError(
            f"{what}: its latitudes {alat.min():g}..{alat.max():g} do not cover the package's "
            f"input grid {lat.min():g}..{lat.max():g}; give an archive that covers it"
        )
    rows = np.flatnonzero((alat >= lat.min() - dy) & (alat <= lat.max() + dy))
    rows = rows[np.argsort(alat[rows])]
    centre = float(np.angle(np.exp(1j * np.deg2rad(lon)).mean(), deg=True))
    off, dt = _wrap(alon - centre), _wrap(lon - centre)
    order = np.argsort(off, kind="stable")
    cols, ext = order, off[order]
    if abs(alon.size * dx - 360.0) < 1e-3 * dx:  # global: periodic across the seam
        cols = np.concatenate([order[-1:], order, order[:1]])
        ext = np.concatenate([ext[-1:] - 360.0, ext, ext[:1] + 360.0])
    keep = (ext >= dt.min() - dx * (1 + 1e-6)) & (ext <= dt.max() + dx * (1 + 1e-6))
    cols, ext = cols[keep], ext[keep]
    gaps = np.diff(ext)
    if (
        ext.size < 2
        or ext[0] > dt.min() + tol_x
        or ext[-1] < dt.max() - tol_x
        or (gaps.size and gaps.max() > 1.5 * dx)
    ):
        raise CoverageError(
            f"{what}: its longitudes {alon.min():g}..{alon.max():g} do not cover the "
            f"package's input grid {lon.min():g}..{lon.max():g}; give an archive that covers it"
        )
    out = var.isel(lat=rows, lon=cols).assign_coords(lat=alat[rows], lon=centre + ext)
    return out.chunk({"lat": -1, "lon": -1}), centre, (ext[0], ext[-1])


def _at_points(
    var: xr.DataArray, lat: np.ndarray, lon: np.ndarray, regrid: str | None, what: str
) -> tuple[xr.DataArray, str]:
    """``var`` at the package's points ``(time, y_coarse, x_coarse)`` and how it got there."""
    alat, alon = var["lat"].values.astype(np.float64), var["lon"].values.astype(np.float64)
    grid_lat = lat if lat.ndim == 1 else lat.ravel()
    grid_lon = lon if lon.ndim == 1 else lon.ravel()
    iy, miss_y = _match(alat, grid_lat, periodic=False)
    ix, miss_x = _match(alon, grid_lon, periodic=True)
    if iy is not None and ix is not None:
        if lat.ndim == 2:
            iy, ix = iy.reshape(lat.shape), ix.reshape(lon.shape)
        out = var.isel(_indexers(iy, ix)).drop_vars(["lat", "lon"])
        return out, "taken at the package's input grid points"
    if regrid is None:
        axis, values, missing = (
            ("latitude", alat, miss_y) if iy is None else ("longitude", alon, miss_x)
        )
        raise CoverageError(
            f"{what}: the archive has no {axis} {missing:g} of the package's input grid (its "
            f"{axis}s {values.min():g}..{values.max():g} every {_cell(values):g}); pass "
            "regrid='bilinear' to interpolate onto the package's grid"
        )
    window, centre, (west, east) = _window(var, lat, lon, what)
    dims = (Y_COARSE,) if lat.ndim == 1 else (Y_COARSE, X_COARSE)
    xdims = (X_COARSE,) if lon.ndim == 1 else (Y_COARSE, X_COARSE)
    # points within the tolerance beyond the archive's edge take its edge values
    out = window.interp(
        lat=xr.DataArray(np.clip(lat, alat.min(), alat.max()), dims=dims),
        lon=xr.DataArray(centre + np.clip(_wrap(lon - centre), west, east), dims=xdims),
        method="linear",
    )
    if np.issubdtype(var.dtype, np.floating):  # interp computes float64 but says float32
        cast = functools.partial(np.asarray, dtype=var.dtype)
        out = out.copy(data=out.data.map_blocks(cast, dtype=var.dtype))
    return out.drop_vars(["lat", "lon"]), "interpolated bilinearly onto the package's input grid"


def _attrs(var: xr.DataArray, name: str, sel: Mapping[str, Any], what: str) -> dict[str, Any]:
    attrs = dict(var.attrs)
    if not str(attrs.get("units", "")).strip():
        expected = _names.units_of(name)
        raise MetadataError(
            f"{what} has no 'units' attribute; set coarse['{sel['variable']}'].attrs['units']"
            + (f" (the package expects '{expected}')" if expected else "")
        )
    text = attrs.get("long_name") or attrs.get("standard_name") or _names.long_name(name)
    text = str(text or sel["variable"])
    if sel["level"] is not None and "hPa" not in text:
        text = f"{text} at {sel['level']:g} hPa"
    attrs["long_name"] = text
    attrs["archive_variable"] = _names.describe(
        {"variable": sel["variable"], "level": sel["level"]}
    )
    return attrs


def _package_names(codec: CodecLike, given: Mapping[str, str] | None) -> dict[str, str]:
    """``{codec input name: package input name}``: ``given``, else the codec's rule undone
    (an input named like an output or invariant is the codec's ``<name>_coarse``)."""
    taken = set(codec.targets) | set(codec.static)
    names = {}
    for name in codec.inputs:
        base = name.removesuffix("_coarse")
        names[name] = (given or {}).get(name) or (base if base in taken else name)
    return names


def _input(
    coarse: xr.Dataset,
    codec_name: str,
    name: str,
    name_map: Mapping[str, Any] | None,
    points: tuple[np.ndarray, np.ndarray],
    regrid: str | None,
) -> tuple[xr.DataArray, str]:
    """Package input ``name`` (``codec_name`` in the pair) on the package's input grid,
    lazily, and a note of how."""
    if name_map and codec_name in name_map and name not in name_map:
        name_map = {**name_map, name: name_map[codec_name]}
    found, sel = _names.find_variable(coarse, name, name_map)
    what = f"package input '{name}' (archive {_names.describe(sel)})"
    var = _names.on_time_lat_lon(found, sel, what)
    if var.chunks is None:  # lazily indexed or in memory: make it dask, one step a chunk
        var = var.chunk({TIME: 1, "lat": -1, "lon": -1})
    out, how = _at_points(var, *points, regrid, what)
    out = out.chunk({Y_COARSE: -1, X_COARSE: -1})
    out.attrs = _attrs(found, name, sel, what)
    return out.rename(codec_name), f"{what}: {how}"


def _merged_inputs(parts: list[xr.DataArray]) -> xr.Dataset:
    first = parts[0]
    for part in parts[1:]:
        if not part.indexes[TIME].equals(first.indexes[TIME]):
            raise TimeAxisError(
                f"package inputs '{first.name}' and '{part.name}' have different times in the "
                f"archive ({first.sizes[TIME]} and {part.sizes[TIME]} steps); select common "
                "times first"
            )
    return xr.merge(parts, join="exact", combine_attrs="drop_conflicts")


def package_pair(
    coarse: xr.Dataset,
    *,
    codec: CodecLike,
    input_grid: xr.Dataset,
    output_grid: xr.Dataset,
    invariants: xr.Dataset | None,
    name_map: Mapping[str, Any] | None = None,
    regrid: str | None = None,
    input_names: Mapping[str, str] | None = None,
    truth: xr.Dataset | None = None,
) -> DownscalingData:
    """Pair a user's coarse archive with a package's grids, invariants and statistics.

    Parameters
    ----------
    coarse
        The archive as xarray opens it: native names (ERA5/ARCO or cfgrib), dims time,
        latitude/longitude (``lat``/``lon``), pressure levels on a level dim.
    codec
        The package's codec: ``inputs`` are looked for in ``coarse``, ``static`` in
        ``invariants``; its ``stats`` become the pair's.
    input_grid
        ``lat``/``lon``: 1-D increasing (a regular grid) or 2-D (curvilinear).
    output_grid
        1-D ``y``/``x``, 2-D ``lat(y, x)``/``lon(y, x)``.
    invariants
        ``(y, x)`` fields on ``output_grid`` named as ``codec.static`` (None when none).
    name_map
        ``{package name: selector}`` (:mod:`corrdiff_xr.data.names`); an entry is used alone.
        A codec input name (``t2m_coarse``) is accepted as a key too.
    regrid
        None: the archive must hold the input grid's points (refused otherwise);
        ``"bilinear"``: interpolate where it does not.
    input_names
        ``{codec input name: package input name}`` where they differ (``Package.input_names``);
        default: ``<name>_coarse`` is the package's ``<name>`` when an output or invariant
        is named ``<name>``, as the package readers name codec inputs.
    truth
        Optional km-scale truth of the package's outputs on its output grid (dims ``time``
        and two spatial dims of the output grid's shape), for ``calibrate`` and scoring: the
        pair then has targets, at the times both hold.

    Returns
    -------
    DownscalingData
        Inputs on ``(time, y_coarse, x_coarse)`` = the input grid, static fields on the
        output grid, targets only from ``truth``, the codec's statistics; dask-backed,
        nothing read.

    Raises
    ------
    DataError
        A subclass naming the package variable, what was looked for and the fix.
    """
    if regrid not in REGRID_CHOICES:
        raise ValueError(f"regrid must be None or 'bilinear', got {regrid!r}")
    if not isinstance(coarse, xr.Dataset):
        raise TypeError(
            f"the coarse archive must be an xarray.Dataset, got {type(coarse).__name__}"
        )
    points = _input_points(input_grid)
    fine = _fine_coords(output_grid)
    parts, notes = [], []
    for codec_name, name in _package_names(codec, input_names).items():
        part, note = _input(coarse, codec_name, name, name_map, points, regrid)
        parts.append(part)
        notes.append(note)
    ds = _merged_inputs(parts)
    ds = ds.assign(_invariants(invariants, codec, fine))
    ds = ds.assign_coords({**_coarse_coords(*points), **fine})
    ds.attrs = {_NOTES_ATTR: "\n".join(notes)}
    targets: tuple[str, ...] = ()
    if truth is not None:
        ds, targets = _with_truth(ds, truth, codec, fine), codec.targets
    pair = open_as_pair(ds, codec, targets)
    if Y not in pair.dataset.dims:  # no variable on the fine grid kept its coordinates
        pair = dataclasses.replace(pair, dataset=pair.dataset.assign_coords(fine))
    return pair


def with_truth(
    ds: xr.Dataset, truth: xr.Dataset, *, codec: CodecLike, output_grid: xr.Dataset
) -> xr.Dataset:
    """``ds`` (inputs on the valid-time axis, fine ``y``/``x`` of ``output_grid``) with the
    package's outputs from ``truth`` as targets, at the times both hold: for layouts that
    build their inputs themselves (:mod:`corrdiff_xr.data.package_windows`)."""
    return _with_truth(ds, truth, codec, _fine_coords(output_grid))


def open_as_pair(
    ds: xr.Dataset, codec: CodecLike, targets: tuple[str, ...] = ()
) -> DownscalingData:
    """``ds`` (the canonical layout built from a package's grids) as a pair with the codec's
    roles and statistics; ``targets`` only when a truth was added."""
    stats = stats_dataset({n: codec.stats[n] for n in codec.inputs + codec.static + targets})
    return open_pair(
        ds,
        inputs=codec.inputs,
        targets=targets,
        static=codec.static,
        stats=stats,
        require_targets=bool(targets),
    )


def _with_truth(ds: xr.Dataset, truth: xr.Dataset, codec: CodecLike, fine: Mapping) -> xr.Dataset:
    """``ds`` with the package's outputs from ``truth`` as targets on the output grid."""
    missing = [n for n in codec.targets if n not in truth.data_vars]
    if missing:
        raise MissingVariableError(
            f"truth has no {missing} of the package's outputs {list(codec.targets)}; "
            f"it holds {sorted(map(str, truth.data_vars))}"
        )
    shape = (fine[Y].size, fine[X].size)
    out = {}
    for name in codec.targets:
        var = truth[name]
        space = [d for d in var.dims if d != TIME]
        if TIME not in var.dims or len(space) != 2 or tuple(var.sizes[d] for d in space) != shape:
            raise DimensionError(
                f"truth '{name}' has dims {dict(var.sizes)}; it must be on ('time', y, x) of "
                f"the package's output grid, shape {shape}"
            )
        var = var.transpose(TIME, *space).rename(dict(zip(space, (Y, X))))
        for coord in (LAT, LON):  # placed by geography: its positions must be the grid's
            if (
                coord in var.coords
                and var[coord].shape == shape
                and not np.allclose(var[coord].values, fine[coord].values, atol=1e-4)
            ):
                raise CoordinateError(
                    f"truth '{name}': its '{coord}' differs from the package's output grid "
                    "by more than 1e-4 degrees; regrid the truth to the package's grid first"
                )
        keep = [c for c in var.coords if c == TIME]
        out[name] = var.reset_coords(drop=True).drop_vars(
            [c for c in var.coords if c not in keep], errors="ignore"
        )
    targets = xr.Dataset(out).assign_coords({Y: fine[Y], X: fine[X]})
    common = np.intersect1d(ds[TIME].values, targets[TIME].values)
    if common.size == 0:
        raise TimeAxisError("truth and the coarse archive share no time; pick a common period")
    return ds.sel({TIME: common}).assign(targets.sel({TIME: common}))
