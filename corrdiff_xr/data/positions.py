"""Where the fine pixels fall on the coarse grid: by position, never by array index.

:func:`grid_method` says how a canonical dataset's coarse grid is placed (see
:mod:`corrdiff_xr.data.regrid`); :func:`fine_positions` gives the fine pixels on the coarse
axes (its latitude/longitude, its own CRS through pyproj, or a coordinate system shared with
the fine grid once shown to agree in latitude/longitude); a curvilinear coarse grid known only
by its 2-D latitude/longitude gets linear weights on triangles (:func:`sphere_weights`);
:func:`coverage_mask` says which fine pixels the coarse grid covers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from corrdiff_xr._cf import COARSE_GRID_MAPPING
from corrdiff_xr.data.grids import GRIB_RADIUS, _cf_crs, crs_from_cf, from_geographic
from corrdiff_xr.data.layout import CoordinateError, CoverageError, MissingVariableError
from corrdiff_xr.dims import COARSE_DIMS, LAT, LAT_COARSE, LON, LON_COARSE, X_COARSE, Y_COARSE, X, Y

if TYPE_CHECKING:
    from pyproj import CRS
    from scipy.spatial import Delaunay

__all__ = [
    "coverage_mask",
    "fine_positions",
    "grid_method",
    "half_cell_bounds",
    "sphere_weights",
    "wrapped",
]


def wrapped(
    coarse: np.ndarray, query: np.ndarray, coarse_name: str, kind: str
) -> tuple[np.ndarray, np.ndarray, bool, bool]:
    """Ascending coarse axis, the query wrapped onto it, periodic?, descending?"""
    coarse = np.asarray(coarse, dtype=np.float64)
    query = np.asarray(query, dtype=np.float64)
    n = coarse.size
    if n < 2:
        raise CoordinateError(
            f"coarse coordinate '{coarse_name}' has {n} point(s); bilinear regridding needs >= 2"
        )
    step = np.diff(coarse)
    if not (np.all(step > 0) or np.all(step < 0)):
        raise CoordinateError(f"coarse coordinate '{coarse_name}' is not strictly monotonic")
    descending = bool(step[0] < 0)
    c = coarse[::-1] if descending else coarse
    periodic = False
    if kind == "longitude":
        spacing = abs(float(np.median(step)))
        periodic = bool(abs(c[-1] - c[0] + spacing - 360.0) < 1e-6 * 360)
        if periodic:  # wrap into [c0, c0 + 360): the last interval joins back to c0
            query = c[0] + np.mod(query - c[0], 360.0)
        else:  # wrap to within 180 degrees of the grid's centre
            mid = 0.5 * (c[0] + c[-1])
            query = mid + np.mod(query - mid + 180.0, 360.0) - 180.0
    return c, query, periodic, descending


def half_cell_bounds(c: np.ndarray) -> tuple[float, float, float]:
    """Accepted range (half a cell beyond the outer centres) and its tolerance."""
    lo = c[0] - 0.5 * (c[1] - c[0])
    hi = c[-1] + 0.5 * (c[-1] - c[-2])
    return lo, hi, 1e-9 * max(abs(hi - lo), 1.0)


def grid_method(ds: xr.Dataset) -> str:
    """How the coarse grid is placed (see the module docstring).

    ``"latlon"`` (1-D latitude/longitude), ``"crs"`` (its own CRS, the coordinate
    ``crs_coarse``), ``"projected"`` (a projection shared with the fine grid, by
    ``standard_name``) or ``"sphere"`` (curvilinear: 2-D ``lat_coarse``/``lon_coarse`` only).

    Raises
    ------
    CoordinateError
        When the coarse axes are bare indices without ``lat_coarse``/``lon_coarse``.
    """
    for name in (Y_COARSE, X_COARSE):
        if name not in ds.coords:
            raise MissingVariableError(f"coarse grid coordinate '{name}' is missing")
    sy = ds[Y_COARSE].attrs.get("standard_name")
    sx = ds[X_COARSE].attrs.get("standard_name")
    if (sy, sx) == ("latitude", "longitude"):
        return "latlon"
    if COARSE_GRID_MAPPING in ds.coords:
        return "crs"
    if all(ds[c].attrs.get("standard_name") or ds[c].attrs.get("axis") for c in COARSE_DIMS):
        return "projected"
    if LAT_COARSE in ds.coords and LON_COARSE in ds.coords:
        return "sphere"
    raise CoordinateError(
        f"the coarse grid's '{Y_COARSE}'/'{X_COARSE}' are bare indices with no CRS and no "
        f"'{LAT_COARSE}'/'{LON_COARSE}': it cannot be placed (grids are never paired by "
        "index); give it latitude/longitude, or projection coordinates and a grid mapping"
    )


def _fine_latlon(ds: xr.Dataset, why: str) -> tuple[np.ndarray, np.ndarray]:
    for name in (LAT, LON):
        if name not in ds.coords:
            raise MissingVariableError(
                f"coordinate '{name}(y, x)' is missing; it is needed to regrid from {why}"
            )
        if ds[name].dims != (Y, X):
            raise CoordinateError(f"coordinate '{name}' has dims {ds[name].dims}; expected (y, x)")
    return np.asarray(ds[LAT].values, np.float64), np.asarray(ds[LON].values, np.float64)


def _check_shared_geography(ds: xr.Dataset) -> None:
    """The coarse cells' lat/lon agree with the fine grid's at the same ``y``/``x``.

    Two grids said to share ``y``/``x`` (a projection, or a parent grid's indices, as the
    reference converters write) are checked by geography where both give lat/lon: the fine
    lat/lon interpolated at the coarse points inside the fine domain must match.
    """
    if not all(c in ds.coords for c in (LAT, LON, LAT_COARSE, LON_COARSE)):
        return
    from scipy.interpolate import RegularGridInterpolator

    y, x = np.asarray(ds[Y].values, float), np.asarray(ds[X].values, float)
    yc, xc = np.meshgrid(ds[Y_COARSE].values, ds[X_COARSE].values, indexing="ij")
    inside = (yc >= y.min()) & (yc <= y.max()) & (xc >= x.min()) & (xc <= x.max())
    if not inside.any() or y.size < 2 or x.size < 2:
        return
    order_y, order_x = np.argsort(y), np.argsort(x)
    fine_xyz = np.stack(_unit(ds[LAT].values, ds[LON].values), axis=-1)[order_y][:, order_x]
    got = RegularGridInterpolator((y[order_y], x[order_x]), fine_xyz)(
        np.stack([yc[inside], xc[inside]], axis=-1)
    )
    got /= np.linalg.norm(got, axis=-1, keepdims=True)
    coarse_xyz = np.stack(_unit(ds[LAT_COARSE].values, ds[LON_COARSE].values), axis=-1)
    km = 6371.0 * np.arccos(np.clip((got * coarse_xyz[inside]).sum(-1), -1.0, 1.0))
    step = (coarse_xyz[:, 1:] * coarse_xyz[:, :-1]).sum(-1)
    spacing = float(np.median(6371.0 * np.arccos(np.clip(step, -1.0, 1.0)))) if step.size else 0
    if km.max() > max(0.25 * spacing, 1e-3):
        raise CoordinateError(
            f"coarse '{Y_COARSE}'/'{X_COARSE}' and fine '{Y}'/'{X}' claim one coordinate "
            f"system, but at the same y/x their latitude/longitude differ by up to "
            f"{km.max():.4g} km (a coarse cell is ~{spacing:.4g} km): the grids are not "
            "paired by position; give each archive its CRS or its own latitude/longitude"
        )


def _shared_projection(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The fine ``y``/``x`` as query points, once both grids are shown to share them."""
    for fine, coarse in ((Y, Y_COARSE), (X, X_COARSE)):
        sf, sc = ds[fine].attrs.get("standard_name"), ds[coarse].attrs.get("standard_name")
        af, ac = ds[fine].attrs.get("axis"), ds[coarse].attrs.get("axis")
        if sf != sc or (not sf and af != ac):
            raise CoordinateError(
                f"coarse '{coarse}' (standard_name {sc!r}) and fine '{fine}' (standard_name "
                f"{sf!r}) are not in the same coordinate system; give the coarse grid "
                "latitude/longitude coords, a grid mapping, or the fine grid's projection"
            )
        uf, uc = ds[fine].attrs.get("units"), ds[coarse].attrs.get("units")
        if uf and uc and uf != uc:
            raise CoordinateError(
                f"coarse '{coarse}' is in {uc!r} but fine '{fine}' is in {uf!r}; convert "
                "one so both grids use the same units"
            )
    _check_shared_geography(ds)
    return np.meshgrid(ds[Y].values, ds[X].values, indexing="ij")


def fine_positions(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray, tuple, tuple]:
    """The fine pixels on the coarse grid's axes: ``(qy, qx, names, kinds)``.

    Not for ``"sphere"`` grids, which have no coarse axes to be placed on.
    """
    method = grid_method(ds)
    for name in (Y, X):
        if name not in ds.coords:
            raise MissingVariableError(f"fine grid coordinate '{name}' is missing")
    kinds = tuple(ds[c].attrs.get("standard_name", "") for c in (Y_COARSE, X_COARSE))
    if method == "latlon":
        qy, qx = _fine_latlon(ds, "the lat/lon coarse grid")
        names = (LAT, LON)
    elif method == "crs":
        crs = coarse_crs(ds)
        qy, qx = from_geographic(crs, *_fine_latlon(ds, "a coarse grid with its own CRS"))
        scale = 1e-3 if ds[Y_COARSE].attrs.get("units") == "km" else 1.0
        qy, qx = qy * scale, qx * scale
        names = (f"{LAT}/{LON} in the coarse CRS (y)", f"{LAT}/{LON} in the coarse CRS (x)")
        kinds = (kinds[0], "longitude" if kinds[1] == "grid_longitude" else kinds[1])
    elif method == "projected":
        qy, qx = _shared_projection(ds)
        names = (Y, X)
    else:
        raise ValueError("a 'sphere' coarse grid has no axes to place the fine pixels on")
    for name, q in zip(names, (qy, qx)):
        if np.isnan(q).any():
            raise CoordinateError(f"fine coordinate '{name}' holds NaN; cannot regrid to it")
    return qy, qx, names, kinds


def coverage_mask(ds: xr.Dataset) -> np.ndarray:
    """``(y, x)`` booleans: which fine pixels the coarse grid covers (half a cell beyond)."""
    if grid_method(ds) == "sphere":
        return (_sphere_simplices(ds)[1] != -1).reshape(ds.sizes[Y], ds.sizes[X])
    qy, qx, _, kinds = fine_positions(ds)
    inside = np.ones(qy.shape, bool)
    for coarse, q, kind in ((Y_COARSE, qy, kinds[0]), (X_COARSE, qx, kinds[1])):
        c, q, periodic, _ = wrapped(ds[coarse].values, q, coarse, kind)
        if not periodic:
            lo, hi, tol = half_cell_bounds(c)
            inside &= (q >= lo - tol) & (q <= hi + tol)
    return inside


def coarse_crs(ds: xr.Dataset) -> CRS:
    """The CRS of the coarse grid's ``crs_coarse`` coordinate, or a one-line error."""
    crs = crs_from_cf(ds[COARSE_GRID_MAPPING].attrs)
    if crs is None:
        raise CoordinateError(
            f"coordinate '{COARSE_GRID_MAPPING}' has no attributes; give it the coarse grid's "
            "CF grid mapping (grid_mapping_name and its parameters)"
        )
    return crs


def _sphere_simplices(
    ds: xr.Dataset,
) -> tuple[Delaunay, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Triangles of the coarse points holding each fine pixel, in a plane centred on it:
    ``(triangulation, simplex per pixel (-1 outside, -2 nearest), nearest, points, kept)``."""
    from scipy.spatial import Delaunay, cKDTree

    lat, lon = _fine_latlon(ds, "a curvilinear coarse grid")
    clat = np.asarray(ds[LAT_COARSE].values, np.float64).ravel()
    clon = np.asarray(ds[LON_COARSE].values, np.float64).ravel()
    # an azimuthal equidistant plane about the domain's centre: near-true distances
    v = np.stack(_unit(lat.ravel(), lon.ravel())).mean(axis=1)
    lat0 = float(np.degrees(np.arctan2(v[2], np.hypot(v[0], v[1]))))
    lon0 = float(np.degrees(np.arctan2(v[1], v[0])))
    near = np.flatnonzero(np.stack(_unit(clat, clon)).T @ (v / np.linalg.norm(v)) > 0.1)
    plane = _cf_crs(
        {"grid_mapping_name": "azimuthal_equidistant", "latitude_of_projection_origin": lat0,
         "longitude_of_projection_origin": lon0, "earth_radius": GRIB_RADIUS}
    )  # fmt: skip
    cy, cx = from_geographic(plane, clat[near], clon[near])
    fy, fx = from_geographic(plane, lat, lon)
    tri = Delaunay(np.stack([cx, cy], axis=-1))
    points = np.stack([fx.ravel(), fy.ravel()], axis=-1)
    flat = tri.find_simplex(points)
    edge = np.zeros(flat.size, np.intp)
    if (flat < 0).any():  # beyond the outer points: up to half a cell takes the nearest (-2)
        tree = cKDTree(tri.points)
        spacing = float(np.median(tree.query(tri.points, k=2)[0][:, 1]))
        outside = np.flatnonzero(flat < 0)
        dist, nearest = tree.query(points[outside])
        close = dist <= 0.75 * spacing
        edge[outside[close]] = nearest[close]
        flat[outside[close]] = -2
    return tri, flat, edge, points, near


def _unit(lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    phi, lam = np.deg2rad(lat), np.deg2rad(lon)
    return np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)


def sphere_weights(ds: xr.Dataset, *, scheme: str = "bilinear") -> tuple[np.ndarray, np.ndarray]:
    """``(y, x, 4)`` indices and weights, linear on triangles (the 4th corner weighs 0);
    ``scheme="nearest"``: the nearest coarse point in the plane, weighing 1."""
    if scheme == "conservative":
        raise ValueError(
            "sphere_weights gives bilinear or nearest weights; conservative ones on a "
            "curvilinear grid: corrdiff_xr.data.regrid_curvilinear.conservative_weights"
        )
    tri, flat, edge, points, near = _sphere_simplices(ds)
    if (flat == -1).any():
        lat, lon = ds[LAT].values.ravel()[flat == -1], ds[LON].values.ravel()[flat == -1]
        raise CoverageError(
            f"the curvilinear coarse grid does not cover {int((flat == -1).sum())} fine "
            f"pixel(s), e.g. lat {lat[0]:.4g}, lon {lon[0]:.4g} (more than half a cell beyond "
            "its outer points); give a coarse archive around the domain"
        )
    if scheme == "nearest":
        from scipy.spatial import cKDTree

        nearest = near[cKDTree(tri.points).query(points)[1]]
        index = np.repeat(nearest[:, None], 4, axis=1)
        weight = np.zeros(index.shape)
        weight[:, 0] = 1.0
        shape = (ds.sizes[Y], ds.sizes[X], 4)
        return index.reshape(shape), weight.reshape(shape)
    affine = tri.transform[flat.clip(0)]
    b = np.einsum("nij,nj->ni", affine[:, :2], points - affine[:, 2])
    bary = np.clip(np.column_stack([b, 1.0 - b.sum(axis=1)]), 0.0, 1.0)
    bary /= bary.sum(axis=1, keepdims=True)
    corners = tri.simplices[flat.clip(0)]
    corners[flat == -2] = edge[flat == -2, None]  # the nearest point, three times
    corners = near[corners]
    index = np.column_stack([corners, corners[:, :1]])
    weight = np.column_stack([bary, np.zeros(len(flat))])
    shape = (ds.sizes[Y], ds.sizes[X], 4)
    return index.reshape(shape), weight.reshape(shape)
