"""A downscaling pair from separate native archives: coarse, fine and static, lazily.

:func:`open_archives` is the road from the archives people have (a coarse archive in ERA5
conventions, a km-scale archive on its own projected or rotated grid, orography on a third
grid) to the same validated, lazy :class:`~corrdiff_xr.data.DownscalingData` a canonical
store gives. Each archive is adopted as it is (:mod:`corrdiff_xr.data.sources.native`);
then, reading coordinates only:

1. the fine archive is cut to the spatial ``window`` (positions on its grid) and its times to
   the ``time`` period (ISO strings in the archive's own calendar);
2. the coarse times are matched to the fine ones (``match="exact"``, or ``"nearest"`` within
   ``tolerance``; :func:`corrdiff_xr.data.times.align`): unmatched times are dropped from
   both, with a warning saying how many, and the pair carries the fine (target) times;
3. the coarse grid is cropped to the fine domain plus one coarse cell, found by geography
   (never by array index: each grid is placed by its CRS, :mod:`corrdiff_xr.data.grids`),
   with its longitudes unwrapped around the domain in the fine archive's convention (a 0..360
   archive and a domain across 0 or 180 degrees give a monotonic, contiguous window), so a
   task reads a regional field, not the globe; a coarse archive covering only part of the
   domain is refused, naming the fine window it does cover;
4. static fields on the fine grid's coordinates (same axes and CRS) are cut out exactly; on
   another grid they are regridded bilinearly (lazily, placed by their own CRS or
   latitude/longitude);
5. the parts are merged (names must differ: map them, ``{"t2m": "t2m_coarse"}``) and checked
   by :func:`corrdiff_xr.data.open_pair`, which computes the regridding weights once.

What was changed (squeezed dims, dropped bounds, cropping, regridding, times dropped) is kept
in the dataset attribute :data:`NOTES_ATTR`, one line per note.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import dask.array as da
import numpy as np
import xarray as xr

from corrdiff_xr._cf import COARSE_GRID_MAPPING, grid_mappings
from corrdiff_xr.data.archive_spec import (
    SOURCE_KEYS,
    check_complete,
    check_distinct,
    check_keys,
    check_names,
    check_variables,
    given_options,
    window_slice,
)
from corrdiff_xr.data.grids import crs_from_cf
from corrdiff_xr.data.layout import (
    CoverageError,
    DataError,
    EmptySelectionError,
    NameClashError,
    combine,
)
from corrdiff_xr.data.pair import DownscalingData, open_pair
from corrdiff_xr.data.regrid import bilinear_weights, coverage_mask, fine_positions, grid_method
from corrdiff_xr.data.regrid_methods import REGRID_ATTR, check_method, coarsened, is_coarsen_spec
from corrdiff_xr.data.sources.forecast import check_leads
from corrdiff_xr.data.sources.formats import open_store
from corrdiff_xr.data.sources.native import Adopted, Grid, adopt
from corrdiff_xr.data.times import TimeMatch, align, parse_times, to_ns
from corrdiff_xr.dims import LAT, LAT_COARSE, LON, LON_COARSE, TIME, X_COARSE, Y_COARSE, X, Y

if TYPE_CHECKING:
    from pyproj import CRS

__all__ = ["NOTES_ATTR", "ArchiveSource", "open_archives"]

#: dataset attribute listing what pairing changed
NOTES_ATTR = "corrdiff_xr_pairing"

#: an archive: a path/URL, an open Dataset, or a mapping with ``url`` (or ``dataset``),
#: ``storage_options``, ``engine``, ``backend_kwargs``, ``variables`` ({native: canonical})
#: and ``select`` ({dim: value})
ArchiveSource = str | os.PathLike | xr.Dataset | Mapping[str, Any]


def _open(source: ArchiveSource, *, grid: Grid, what: str) -> Adopted:
    spec: Mapping[str, Any]
    if isinstance(source, xr.Dataset):  # a Mapping too: test it first
        spec = {"dataset": source}
    elif isinstance(source, Mapping):  # mypy keeps Dataset in the union here
        spec = cast("Mapping[str, Any]", source)
    else:
        spec = {"url": source}
    check_keys(spec, SOURCE_KEYS, what)
    check_variables(spec.get("variables"), what)
    if ("url" in spec) == ("dataset" in spec):
        raise DataError(f"{what}: give exactly one of 'url' (a path or URL) or 'dataset'")
    if "url" in spec:
        ds = open_store(
            spec["url"], engine=spec.get("engine"), backend_kwargs=spec.get("backend_kwargs"),
            storage_options=given_options(spec.get("storage_options")), what=what,
        )  # fmt: skip
    else:
        ds = spec["dataset"]
    adopted = adopt(
        ds, grid=grid, variables=spec.get("variables"), select=spec.get("select"), what=what
    )  # fmt: skip
    check_names(adopted.dataset.data_vars, what)  # names taken unmapped from the archive
    return adopted


def _window(fine: xr.Dataset, window: Mapping[str, Sequence[int]] | None) -> xr.Dataset:
    if not window:
        return fine
    check_keys(window, (Y, X), "window (fine grid positions)", error=EmptySelectionError)
    return fine.isel({dim: window_slice(dim, b, fine.sizes[dim]) for dim, b in window.items()})


def _period(fine: xr.Dataset, period: Mapping[str, str] | None) -> xr.Dataset:
    if not period:
        return fine
    check_keys(period, ("start", "end"), "time (the period)", error=EmptySelectionError)
    times = fine[TIME].values
    keep = np.ones(times.size, bool)
    ns = to_ns(times)
    if period.get("start"):
        keep &= ns >= to_ns(parse_times([str(period["start"])], times))[0]
    if period.get("end"):
        keep &= ns <= to_ns(parse_times([str(period["end"])], times))[0]
    if not keep.any():
        raise EmptySelectionError(
            f"time {dict(period)} selects none of the fine archive's times "
            f"({times[0]} .. {times[-1]})"
        )
    return fine.isel({TIME: np.flatnonzero(keep)})


def _range_index(values: np.ndarray, lo: float, hi: float, what: str) -> np.ndarray:
    """Positions of ``values`` (monotonic) within [lo, hi] widened by one cell each side."""
    inside = np.flatnonzero((values >= lo) & (values <= hi))
    if inside.size == 0:  # the domain falls between two coarse centres
        inside = np.array([int(np.argmin(np.abs(values - 0.5 * (lo + hi))))])
    first, last = max(inside.min() - 1, 0), min(inside.max() + 1, values.size - 1)
    if last - first < 1:
        raise CoverageError(f"{what}: the coarse grid has a single point over the fine domain")
    return np.arange(first, last + 1)


def _domain_centre(fine: xr.Dataset) -> float:
    """The fine domain's central longitude, in the fine archive's own convention."""
    lon = fine[LON].values
    centre = float(np.angle(np.exp(1j * np.deg2rad(lon)).mean(), deg=True))
    if np.ptp(lon) < 180.0:  # contiguous in its convention (225..313 stays 225..313)
        centre += 360.0 * np.round((float(np.mean(lon)) - centre) / 360.0)
    return centre


def _coarse_grid(coarse: xr.Dataset, fine: xr.Dataset) -> xr.Dataset:
    """Coordinates of both grids in one Dataset, as the regridding reads them."""
    names = (Y_COARSE, X_COARSE, LAT_COARSE, LON_COARSE, COARSE_GRID_MAPPING)
    kept = {c: coarse.coords[c] for c in names if c in coarse.coords}
    return xr.Dataset(coords={**kept, **{c: fine.coords[c] for c in (Y, X, LAT, LON)}})


def _nearest_box(coarse: xr.Dataset, fine: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of a curvilinear coarse grid around its points nearest the fine ones."""
    from scipy.spatial import cKDTree

    def unit(lat: xr.DataArray, lon: xr.DataArray) -> np.ndarray:
        phi, lam = np.deg2rad(np.ravel(lat)), np.deg2rad(np.ravel(lon))
        return np.column_stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)])

    nearest = cKDTree(unit(coarse[LAT_COARSE], coarse[LON_COARSE])).query(
        unit(fine[LAT], fine[LON])
    )[1]
    rows, cols = np.unravel_index(nearest, coarse[LAT_COARSE].shape)
    ny, nx = coarse[LAT_COARSE].shape
    return (
        np.arange(max(rows.min() - 2, 0), min(rows.max() + 3, ny)),
        np.arange(max(cols.min() - 2, 0), min(cols.max() + 3, nx)),
    )


def _fitting_window(covered: np.ndarray) -> tuple[int, int, int, int] | None:
    """A large all-covered window ``(y0, y1, x0, x1)``: edges dropped, worst first."""
    y0, y1, x0, x1 = 0, covered.shape[0], 0, covered.shape[1]
    while y0 < y1 and x0 < x1:
        sub = ~covered[y0:y1, x0:x1]
        if not sub.any():
            return y0, y1, x0, x1
        edges = [sub[0].mean(), sub[-1].mean(), sub[:, 0].mean(), sub[:, -1].mean()]
        worst = int(np.argmax(edges))
        y0, y1 = y0 + (worst == 0), y1 - (worst == 1)
        x0, x1 = x0 + (worst == 2), x1 - (worst == 3)
    return None


def _check_covered(coarse: xr.Dataset, fine: xr.Dataset, origin: tuple[int, int]) -> None:
    """A CoverageError naming the fine window the coarse archive does cover, if not all, in
    the fine archive's own positions (``origin``: where a window given already starts)."""
    grid = _coarse_grid(coarse, fine)
    covered = coverage_mask(grid)
    if covered.all():
        return
    try:
        bilinear_weights(grid)
        reason = "the coarse archive does not cover the whole fine domain"
    except CoverageError as err:
        reason = str(err)
    box = _fitting_window(covered)
    if box is not None:
        box = (box[0] + origin[0], box[1] + origin[0], box[2] + origin[1], box[3] + origin[1])
    fix = (
        f"it covers the fine window {{'y': [{box[0]}, {box[1]}], 'x': [{box[2]}, {box[3]}]}} "
        "(positions on the fine archive's grid): pass that window, or a coarse archive "
        "covering the domain"
        if box is not None
        else "it covers none of the fine domain; give a coarse archive around it"
    )
    raise CoverageError(f"coarse archive: {reason}; {fix}")


def _crop_coarse(
    coarse: xr.Dataset, fine: xr.Dataset, notes: list[str], origin: tuple[int, int] = (0, 0)
) -> xr.Dataset:
    """The coarse window over the fine domain, placed by geography, never by array index
    (see doc, 3); longitudes follow the fine archive's convention."""
    method = grid_method(_coarse_grid(coarse, fine))
    before = (coarse.sizes[Y_COARSE], coarse.sizes[X_COARSE])
    centre = _domain_centre(fine)
    xs = coarse[X_COARSE].values.astype(np.float64)
    if method == "latlon":
        qy, qx = fine[LAT].values, fine[LON].values
        rows = _range_index(coarse[Y_COARSE].values, qy.min(), qy.max(), "coarse archive")
        offset = (xs - centre + 180.0) % 360.0 - 180.0
        dq = (qx - centre + 180.0) % 360.0 - 180.0
        order = np.argsort(offset, kind="stable")
        cols = order[_range_index(offset[order], dq.min(), dq.max(), "coarse archive")]
        unwrapped = centre + offset[cols]
        steps = np.diff(unwrapped)
        if steps.size and steps.max() > 1.5 * np.median(steps):
            raise CoverageError(
                "coarse archive: its longitudes have a gap over the fine domain "
                f"(a step of {steps.max():.4g} degrees); it does not cover the domain"
            )
    elif method == "sphere":
        rows, cols = _nearest_box(coarse, fine)
        unwrapped = xs[cols]
    else:  # its own CRS, or a projection shared with the fine grid
        qy, qx, _, _ = fine_positions(_coarse_grid(coarse, fine))
        rows = _range_index(coarse[Y_COARSE].values, qy.min(), qy.max(), "coarse archive")
        cols = _range_index(xs, qx.min(), qx.max(), "coarse archive")
        unwrapped = xs[cols]
    out = coarse.isel({Y_COARSE: rows, X_COARSE: cols})
    out = out.assign_coords({X_COARSE: (X_COARSE, unwrapped, coarse[X_COARSE].attrs)})
    lat, lon = out[LAT_COARSE].values, out[LON_COARSE].values
    if method == "latlon":
        lat, lon = np.meshgrid(out[Y_COARSE].values, unwrapped, indexing="ij")
    out = out.assign_coords(
        {
            LAT_COARSE: ((Y_COARSE, X_COARSE), lat, coarse[LAT_COARSE].attrs),
            LON_COARSE: (
                (Y_COARSE, X_COARSE),
                centre + (lon - centre + 180.0) % 360.0 - 180.0,  # the fine's convention
                coarse[LON_COARSE].attrs,
            ),
        }
    )
    _check_covered(out, fine, origin)
    after = (out.sizes[Y_COARSE], out.sizes[X_COARSE])
    if after != before:
        notes.append(f"coarse archive: cropped {before} -> {after} around the fine domain")
    return out


def _exact_positions(source: np.ndarray, target: np.ndarray) -> np.ndarray | None:
    """Positions of ``target``'s values in ``source`` (to 1e-6 of a cell), else None."""
    if source.size < 2:
        return None
    tol = 1e-6 * float(np.median(np.abs(np.diff(source))))
    order = np.argsort(source)
    pos = np.searchsorted(source[order], target).clip(0, source.size - 1)
    lower = (pos - 1).clip(0)
    pick = np.where(
        np.abs(source[order][lower] - target) < np.abs(source[order][pos] - target), lower, pos
    )
    found = order[pick]
    return found if np.all(np.abs(source[found] - target) <= tol) else None


def _crs_of(ds: xr.Dataset) -> CRS | None:
    mappings = grid_mappings(ds)
    return crs_from_cf(mappings[sorted(mappings)[0]].attrs) if mappings else None


def _same_grid(ds: xr.Dataset, fine: xr.Dataset) -> bool:
    """Whether a static archive's axes are the fine grid's own (named, same units and CRS):
    bare index axes never are, whatever their values."""
    for d in (Y, X):
        name = ds[d].attrs.get("standard_name")
        if not name or any(
            ds[d].attrs.get(k) != fine[d].attrs.get(k) for k in ("standard_name", "units")
        ):
            return False
    mine, theirs = _crs_of(ds), _crs_of(fine)
    return mine is None or theirs is None or mine == theirs


def _static_on_fine(part: Adopted, fine: xr.Dataset, what: str, notes: list[str]) -> xr.Dataset:
    """Static fields cut out of (same grid) or regridded to (another grid) the fine grid."""
    ds = part.dataset
    if _same_grid(ds, fine):
        rows = _exact_positions(ds[Y].values.astype(float), fine[Y].values.astype(float))
        cols = _exact_positions(ds[X].values.astype(float), fine[X].values.astype(float))
        if rows is not None and cols is not None:
            if (rows.size, cols.size) != (ds.sizes[Y], ds.sizes[X]):
                notes.append(f"{what}: cut {(ds.sizes[Y], ds.sizes[X])} -> fine grid")
            out = ds.isel({Y: rows, X: cols})
            return out.drop_vars([c for c in out.coords if c not in out.dims]).assign_coords(
                {c: fine.coords[c] for c in (Y, X, LAT, LON)}
            )
    # another grid: regrid as if it were a coarse grid, then give it the fine coords
    as_coarse = ds.rename({Y: Y_COARSE, X: X_COARSE, LAT: LAT_COARSE, LON: LON_COARSE})
    own = grid_mappings(ds)
    if own:  # its CRS places it, as a coarse grid's would
        first = as_coarse[sorted(own)[0]].variable
        as_coarse = as_coarse.drop_vars(list(own)).assign_coords({COARSE_GRID_MAPPING: first})
    grid = xr.Dataset(coords={**as_coarse.coords, **{c: fine.coords[c] for c in (Y, X, LAT, LON)}})
    weights = bilinear_weights(grid)
    fields = {}
    for name, var in as_coarse.data_vars.items():
        data = var.data if isinstance(var.data, da.Array) else da.from_array(var.values)
        data = data.astype(np.result_type(var.dtype, np.float32)).rechunk(-1)
        fine_field = data.map_blocks(weights.apply, chunks=weights.fine_shape, dtype=data.dtype)
        attrs = dict(var.attrs, regridding=f"bilinear from its own grid, method {weights.method}")
        fields[name] = ((Y, X), fine_field, attrs)
    notes.append(f"{what}: regridded bilinearly {weights.coarse_shape} -> {weights.fine_shape}")
    return xr.Dataset(fields, coords={c: fine.coords[c] for c in (Y, X, LAT, LON)})


def _pair_times(
    coarse: xr.Dataset, fine: xr.Dataset, match: TimeMatch, tolerance: str | None, notes: list[str]
) -> tuple[xr.Dataset, xr.Dataset]:
    found = align(coarse[TIME].values, fine[TIME].values, match=match, tolerance=tolerance)
    notes.append(found.report)
    if found.dropped_fine or found.dropped_coarse:
        warnings.warn(f"pairing archives: {found.report}", stacklevel=3)
    coarse = coarse.isel({TIME: found.coarse_index})
    fine = fine.isel({TIME: found.fine_index})
    return coarse.assign_coords({TIME: fine[TIME].variable}), fine  # not fine's lead_time


def _coarse_parts(
    coarse: ArchiveSource | Sequence[ArchiveSource],
    fine: xr.Dataset,
    match: TimeMatch,
    tolerance: str | None,
    notes: list[str],
) -> tuple[xr.Dataset, xr.Dataset]:
    """The coarse archive(s) matched to the fine times; several are merged on one grid."""
    sources: list[ArchiveSource]
    if isinstance(coarse, Sequence) and not isinstance(coarse, (str, Mapping)):
        sources, several = list(coarse), True
    else:
        sources, several = [coarse], False
    if not sources:
        raise DataError("coarse: give at least one coarse archive")
    parts, names = [], []
    for i, source in enumerate(sources):
        names.append(f"coarse archive {i}" if several else "coarse archive")
        if is_coarsen_spec(source):  # block means of the fine archive: its own times
            parts.append(coarsened(fine, source, names[-1]))
            notes.append(f"{names[-1]}: block means of the fine archive, {source['coarsen']}")
            continue
        part = _open(source, grid="coarse", what=names[-1])
        notes += part.notes
        matched, fine = _pair_times(part.dataset, fine, match, tolerance, notes)
        check_leads(matched, fine, names[-1])
        parts.append(matched)
    check_distinct(list(zip(names, parts)))
    # a later archive may have dropped fine times: every part keeps the final ones
    parts = [p.sel({TIME: fine[TIME].values}) for p in parts]
    try:
        merged = xr.merge(
            parts, join="exact", compat="no_conflicts", combine_attrs="drop_conflicts"
        )
    except ValueError as err:
        raise DataError(
            f"the coarse archives cannot be merged ({err}); they must share one grid and use "
            "different names (see each archive's variables map)"
        ) from None
    return merged, fine


def open_archives(
    coarse: ArchiveSource | Sequence[ArchiveSource],
    fine: ArchiveSource,
    static: ArchiveSource | Sequence[ArchiveSource] = (),
    *,
    time: Mapping[str, str] | None = None,
    match: TimeMatch = "exact",
    tolerance: str | None = None,
    window: Mapping[str, Sequence[int]] | None = None,
    regrid: str = "bilinear",
    require_targets: bool = True,
) -> DownscalingData:
    """Pair native coarse, fine and static archives (see the module docstring) lazily.

    Parameters
    ----------
    coarse, fine
        The input and the target archive: a path or fsspec URL, an open Dataset, or a
        mapping with ``url`` (or ``dataset``), ``storage_options``, ``engine`` and
        ``backend_kwargs`` (Zarr by default; NetCDF, GRIB, kerchunk, Icechunk:
        :mod:`corrdiff_xr.data.sources.formats`), ``variables``
        (``{native name: name in the pair}``; default every gridded variable) and ``select``
        (``{dim: value}``, e.g. one pressure level). ``coarse`` may be a list of archives on
        one grid, merged: the same store twice with ``select={"level": 850}`` and
        ``{"level": 500}`` gives a variable at two levels as two inputs. A coarse entry
        ``{"coarsen": {"y": 8, "x": 8}, "variables": {"t2m": "t2m_coarse"}}`` is made of block
        means of the fine archive (:func:`corrdiff_xr.data.regrid_methods.coarsened`).
    static
        Archives of static fields (orography, land-sea mask), on any grid covering the domain.
    time
        ``{"start": ISO, "end": ISO}`` (either may be omitted), in the fine archive's calendar.
    match, tolerance
        Time matching of coarse to fine: ``"exact"``, or ``"nearest"`` within ``tolerance``
        (a duration, ``"30min"``).
    window
        ``{"y": [start, stop], "x": [start, stop]}``: positions of the fine grid to keep.
    regrid
        How the inputs are placed on the fine grid: ``"bilinear"``, ``"nearest"`` or
        ``"conservative"`` (:mod:`corrdiff_xr.data.regrid_methods`); kept in the pairing
        notes, the inputs' ``regridding`` attribute and the weights' ``scheme``.

    Raises
    ------
    DataError
        A subclass naming the archive, variable or dim at fault, and the fix.
    """
    notes: list[str] = []
    check_method(regrid)
    high = _open(fine, grid="fine", what="fine archive")
    fine_ds = _period(_window(high.dataset, window), time)
    coarse_ds, fine_ds = _coarse_parts(coarse, fine_ds, match, tolerance, notes)
    notes += high.notes
    starts = {d: int((window or {}).get(d, (0,))[0]) for d in (Y, X)}  # checked by _window
    origin = (starts[Y], starts[X])
    coarse_ds = _crop_coarse(coarse_ds, fine_ds, notes, origin)
    statics: Sequence[ArchiveSource]
    if isinstance(static, (str, os.PathLike, xr.Dataset, Mapping)):
        statics = [static]
    else:
        statics = static
    parts = []
    for i, source in enumerate(statics):
        what = f"static archive {i}"
        part = _open(source, grid="static", what=what)
        notes += part.notes
        parts.append(_static_on_fine(part, fine_ds, what, notes))
        check_complete(parts[-1], what)  # one small read: a gap fails here, not in training
    check_distinct([(f"static archive {i}", p) for i, p in enumerate(parts)])
    static_ds = xr.merge(parts, compat="no_conflicts") if parts else None
    mapping = high.grid_mapping
    if static_ds is not None and mapping is not None:
        for var in static_ds.data_vars.values():
            var.attrs["grid_mapping"] = mapping
        static_ds = static_ds.assign_coords({mapping: fine_ds[mapping]})
    try:
        ds = combine(coarse_ds, fine_ds, static_ds)
    except NameClashError as err:
        raise NameClashError(
            f"{err}; rename one through the archive's variables map, e.g. "
            "coarse={'url': ..., 'variables': {'t2m': 't2m_coarse'}}"
        ) from None
    notes.append(f"coarse inputs: regridded to the fine grid by {regrid}")
    ds.attrs = {NOTES_ATTR: "\n".join(notes), REGRID_ATTR: regrid}
    return open_pair(ds, require_targets=require_targets)
