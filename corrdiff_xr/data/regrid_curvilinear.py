"""First-order conservative weights when either grid is curvilinear (the ``regrid`` extra).

:func:`conservative_weights` gives every fine cell the coarse cells it overlaps, each weighing
its overlap's area over the part of the fine cell the coarse grid covers, in the four-corner
form of :class:`~corrdiff_xr.data.regrid.BilinearWeights`. It is used by
:func:`~corrdiff_xr.data.regrid.bilinear_weights` for ``regrid="conservative"`` where the
axis-by-axis weights (:func:`~corrdiff_xr.data.regrid_methods.conservative_axis`) cannot be:
a curvilinear coarse grid (``"sphere"``), or a fine grid curvilinear in the coarse grid's axes
(a Lambert fine grid under ERA5 or a rotated-pole grid).

Cells are polygons in a Lambert azimuthal equal-area plane about the fine domain (on the GRIB
sphere, as the rest of the regridding): areas there are the sphere's, shapes near-true at
regional scale, and neither the dateline nor a pole needs a special case. A cell's corners
are, in order of preference:

* its CF bounds, when its latitude coordinate names them (``bounds``: ``(y, x, 4)`` vertices);
* for a coarse grid with 1-D axes (latitude/longitude, or its own CRS): edges halfway between
  centres, as the rectilinear weights take them, each edge followed along its own axis
  (:data:`SUBDIVIDE` points), so a parallel stays a parallel;
* else the midpoints of the four surrounding centres in the plane (extrapolated by half a cell
  at the grid's edges), joined by straight lines.

Where a grid's true edges are unknown, any outline joining its corners is a choice; these
straight ones differ from a latitude/longitude grid's parallels by their bulge, so on such a
grid given by 2-D centres alone the weights differ from the axis-by-axis ones by ~1.7e-2 for
1 degree coarse cells over 0.15 degree fine ones, in proportion to the cell size (1.6e-4 at
0.01 degree). Either set is conservative; the difference is where the edges are drawn.

Overlaps are shapely 2 intersections of candidates from an ``STRtree`` (a fine cell properly
inside one coarse cell skips the intersection: ~2 s for 448 x 448 fine cells under ERA5 on
one core). The four largest per
fine cell are kept and renormalised; fine cells smaller than coarse ones (downscaling) never
overlap more, and a fine cell overlapping more by over :data:`MAX_DROPPED` of its area is
refused (use ``"bilinear"``), as is a fine cell less than half covered by the coarse grid
(the fine pixel's centre beyond its outer cell edges, as for the other schemes). The integral
over the fine domain is preserved and constants are exact.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from corrdiff_xr.data.grids import GRIB_RADIUS, from_geographic, to_geographic
from corrdiff_xr.data.layout import CoordinateError, CoverageError
from corrdiff_xr.data.positions import coarse_crs, fine_positions, grid_method
from corrdiff_xr.dims import LAT, LAT_COARSE, LON, LON_COARSE, X_COARSE, Y_COARSE, X, Y

if TYPE_CHECKING:
    from pyproj import CRS

__all__ = [
    "MAX_DROPPED",
    "SUBDIVIDE",
    "cell_polygons",
    "conservative_weights",
    "corners_from_centres",
    "local_plane",
]

#: overlaps beyond the four largest may hold at most this fraction of a fine cell's area
MAX_DROPPED = 1e-3
#: points per cell edge where the edges are lines of a grid's own axes
SUBDIVIDE = 4
#: a fine cell must be covered by the coarse grid over at least this fraction of its area
_MIN_COVERED = 0.5 - 1e-9


def _shapely() -> ModuleType:
    try:
        import shapely
    except ImportError:  # an optional extra: say which
        raise ImportError(
            "regrid='conservative' between curvilinear grids needs shapely: "
            "pip install corrdiff_xr[regrid]"
        ) from None
    return shapely


def local_plane(lat: np.ndarray, lon: np.ndarray) -> CRS:
    """A Lambert azimuthal equal-area CRS on the GRIB sphere about the points' centre."""
    from pyproj import CRS

    phi, lam = np.deg2rad(np.ravel(lat)), np.deg2rad(np.ravel(lon))
    v = np.array([(np.cos(phi) * np.cos(lam)).sum(), (np.cos(phi) * np.sin(lam)).sum(),
                  np.sin(phi).sum()])  # fmt: skip
    lat0 = np.degrees(np.arctan2(v[2], np.hypot(*v[:2])))
    lon0 = np.degrees(np.arctan2(v[1], v[0]))
    # a PROJ string: CRS.from_cf looks the datum up by name (~0.4 s a centre)
    return CRS(f"+proj=laea +lat_0={lat0:.10f} +lon_0={lon0:.10f} +R={GRIB_RADIUS} +units=m")


def corners_from_centres(py: np.ndarray, px: np.ndarray) -> np.ndarray:
    """``(ny + 1, nx + 1, 2)`` corners ``(x, y)``: means of the four surrounding centres.

    The centres are first extended by one row and column each side by linear extrapolation,
    so the outer corners lie half a cell beyond the outer centres.
    """
    p = np.stack([px, py], axis=-1)
    if p.shape[0] < 2 or p.shape[1] < 2:
        raise CoordinateError(
            f"conservative regridding needs >= 2 cells along y and x, got {p.shape[:2]}"
        )
    p = np.concatenate([2 * p[:1] - p[1:2], p, 2 * p[-1:] - p[-2:-1]], axis=0)
    p = np.concatenate([2 * p[:, :1] - p[:, 1:2], p, 2 * p[:, -1:] - p[:, -2:-1]], axis=1)
    return 0.25 * (p[:-1, :-1] + p[1:, :-1] + p[:-1, 1:] + p[1:, 1:])


def _rings(lattice: np.ndarray, k: int) -> np.ndarray:
    """``(ny, nx, 4k, 2)`` cell outlines of a ``(k ny + 1, k nx + 1, 2)`` corner lattice."""
    steps = np.arange(k)
    di = np.concatenate([0 * steps, steps, k + 0 * steps, k - steps])
    dj = np.concatenate([steps, k + 0 * steps, k - steps, 0 * steps])
    ny, nx = (lattice.shape[0] - 1) // k, (lattice.shape[1] - 1) // k
    rows = k * np.arange(ny)[:, None, None] + di
    cols = k * np.arange(nx)[None, :, None] + dj
    return lattice[rows, cols]


def _bounds(ds: xr.Dataset, name: str, plane: CRS) -> np.ndarray | None:
    """``(y, x, 4, 2)`` outlines in ``plane`` from the CF bounds ``name`` points to, if any."""
    lat_b = ds[name].attrs.get("bounds")
    lon_name = LON if name == LAT else LON_COARSE
    lon_b = ds[lon_name].attrs.get("bounds")
    if lat_b is None or lon_b is None or lat_b not in ds.variables or lon_b not in ds.variables:
        return None
    lat, lon = np.asarray(ds[lat_b].values, float), np.asarray(ds[lon_b].values, float)
    if lat.shape != ds[name].shape + (4,) or lon.shape != lat.shape:
        raise CoordinateError(
            f"bounds '{lat_b}'/'{lon_b}' of '{name}' have shapes {lat.shape}/{lon.shape}; "
            f"CF bounds of a 2-D grid are {ds[name].shape + (4,)} (four vertices per cell)"
        )
    y, x = from_geographic(plane, lat, lon)
    return np.stack([x, y], axis=-1)


def _axis_window(c: np.ndarray, q: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Original indices and ascending (unwrapped) positions of the coarse centres spanning
    the fine positions ``q`` and two cells beyond."""
    c, q = np.asarray(c, float), np.asarray(q, float)
    if kind == "longitude":  # unwrap both about the fine domain's centre
        ref = float(np.angle(np.exp(1j * np.deg2rad(q)).mean(), deg=True))
        c, q = (ref + np.mod(v - ref + 180.0, 360.0) - 180.0 for v in (c, q))
    order = np.argsort(c, kind="stable")
    cs = c[order]
    margin = 2 * float(np.max(np.diff(cs)))
    keep = (cs >= q.min() - margin) & (cs <= q.max() + margin)  # contiguous: cs ascends
    return order[keep], cs[keep]


def _subdivided_edges(cs: np.ndarray, k: int, latitude: bool) -> np.ndarray:
    mid = 0.5 * (cs[1:] + cs[:-1])
    edges = np.concatenate([[2 * cs[0] - mid[0]], mid, [2 * cs[-1] - mid[-1]]])
    if latitude:
        edges = np.clip(edges, -90.0, 90.0)
    return np.interp(np.arange(k * cs.size + 1) / k, np.arange(cs.size + 1), edges)


def _coarse_cells(ds: xr.Dataset, method: str, plane: CRS) -> tuple[np.ndarray, np.ndarray]:
    """Outlines ``(n, m, 2)`` of the coarse cells near the fine domain and their flat indices."""
    ncx = ds.sizes[X_COARSE]
    if method == "sphere":
        rows, cols = _nearest_box(ds)
        sub = ds.isel({Y_COARSE: rows, X_COARSE: cols})
        rings = _bounds(sub, LAT_COARSE, plane)
        if rings is None:
            py, px = from_geographic(plane, sub[LAT_COARSE].values, sub[LON_COARSE].values)
            rings = _rings(corners_from_centres(py, px), 1)
    else:
        qy, qx, _, kinds = fine_positions(ds)
        rows, cy = _axis_window(ds[Y_COARSE].values, qy, kinds[0])
        cols, cx = _axis_window(ds[X_COARSE].values, qx, kinds[1])
        ey = _subdivided_edges(cy, SUBDIVIDE, kinds[0] == "latitude")
        ex = _subdivided_edges(cx, SUBDIVIDE, False)
        gy, gx = np.meshgrid(ey, ex, indexing="ij")
        if method == "crs":
            scale = 1e3 if ds[Y_COARSE].attrs.get("units") == "km" else 1.0
            gy, gx = to_geographic(coarse_crs(ds), gy * scale, gx * scale)
        py, px = from_geographic(plane, gy, gx)
        rings = _rings(np.stack([px, py], axis=-1), SUBDIVIDE)
    index = rows[:, None] * ncx + cols[None, :]
    return rings.reshape(-1, *rings.shape[2:]), index.ravel()


def _nearest_box(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of a curvilinear coarse grid two beyond its points nearest the fine."""
    from scipy.spatial import cKDTree

    def unit(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        phi, lam = np.deg2rad(np.ravel(lat)), np.deg2rad(np.ravel(lon))
        return np.column_stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)])

    tree = cKDTree(unit(ds[LAT_COARSE].values, ds[LON_COARSE].values))
    rows, cols = np.unravel_index(tree.query(unit(ds[LAT].values, ds[LON].values))[1],
                                  ds[LAT_COARSE].shape)  # fmt: skip
    ny, nx = ds[LAT_COARSE].shape
    return (
        np.arange(max(rows.min() - 2, 0), min(rows.max() + 3, ny)),
        np.arange(max(cols.min() - 2, 0), min(cols.max() + 3, nx)),
    )


def _polygons(shapely: ModuleType, rings: np.ndarray) -> np.ndarray:
    """Polygons of ``(n, m, 2)`` outlines, built in one call (closed here)."""
    n, m = rings.shape[:2]
    closed = np.concatenate([rings, rings[:, :1]], axis=1).reshape(-1, 2)
    offsets = (np.arange(n + 1) * (m + 1), np.arange(n + 1))
    return shapely.from_ragged_array(shapely.GeometryType.POLYGON, closed, offsets)


def cell_polygons(
    ds: xr.Dataset, plane: CRS | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, CRS]:
    """Fine and coarse cells as shapely polygons in ``plane`` (default :func:`local_plane`).

    Returns ``(fine (y*x,), coarse (n,), coarse flat indices (n,), plane)``: the coarse
    cells are those near the fine domain, indexed into ``(y_coarse, x_coarse)``.
    """
    shapely = _shapely()
    method = grid_method(ds)
    lat, lon = np.asarray(ds[LAT].values, float), np.asarray(ds[LON].values, float)
    if plane is None:
        plane = local_plane(lat, lon)
    fine = _bounds(ds, LAT, plane)
    if fine is None:
        fy, fx = from_geographic(plane, lat, lon)
        fine = _rings(corners_from_centres(fy, fx), 1)
    coarse, index = _coarse_cells(ds, method, plane)
    polygons = [_polygons(shapely, r.reshape(-1, *r.shape[-2:])) for r in (fine, coarse)]
    for what, p in zip(("fine", "coarse"), polygons):
        bad = ~shapely.is_valid(p)
        if bad.any():  # a folded outline (extrapolated at a sharp bend): split into its parts
            p[bad] = shapely.make_valid(p[bad])
        if not np.isfinite(shapely.area(p)).all():
            raise CoordinateError(
                f"some {what} cells cannot be placed in the plane about the fine domain "
                "(coordinates far beyond it, or NaN); crop the grids to the domain"
            )
    return polygons[0], polygons[1], index, plane


def _top_four(
    f: np.ndarray, c: np.ndarray, area: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per fine cell: the four largest overlaps ``(n, 4)`` and the area of any others."""
    order = np.lexsort((-area, f))
    f, c, area = f[order], c[order], area[order]
    first = np.searchsorted(f, np.arange(n))
    rank = np.arange(f.size) - first[f]
    kept = rank < 4
    dropped = np.bincount(f[~kept], area[~kept], minlength=n)
    index = np.zeros((n, 4), np.int64)
    weight = np.zeros((n, 4))
    index[f[kept], rank[kept]] = c[kept]
    weight[f[kept], rank[kept]] = area[kept]
    filled = np.zeros((n, 4), bool)
    filled[f[kept], rank[kept]] = True
    index = np.where(filled, index, index[:, :1])  # unused corners point at a real cell
    return index, weight, dropped


def conservative_weights(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """``(y, x, 4)`` coarse flat indices and weights, first-order conservative.

    Raises
    ------
    CoverageError
        When a fine cell is less than half covered by the coarse cells.
    CoordinateError
        When a fine cell overlaps more than four coarse cells (wider than coarse cells).
    ImportError
        Without shapely (``pip install corrdiff_xr[regrid]``).
    """
    shapely = _shapely()
    fine, coarse, flat, _ = cell_polygons(ds)
    n = fine.size
    fine_area = shapely.area(fine)
    f, c = shapely.STRtree(coarse).query(fine)  # candidates: bounding boxes overlap
    # most fine cells lie inside one coarse cell: their overlap is their area, no other
    shapely.prepare(coarse)
    whole = shapely.contains_properly(coarse[c], fine[f])
    rest = ~np.isin(f, f[whole])
    area = np.where(whole, fine_area[f], 0.0)
    area[rest] = shapely.area(shapely.intersection(fine[f[rest]], coarse[c[rest]]))
    kept = area > 0
    f, c, area = f[kept], c[kept], area[kept]
    covered = np.bincount(f, area, minlength=n)
    short = np.flatnonzero(covered < _MIN_COVERED * fine_area)
    if short.size:
        i = short[np.argmin(covered[short] / fine_area[short])]  # the worst one
        raise CoverageError(
            f"the coarse grid does not cover {short.size} fine cell(s) (less than half of "
            f"each), e.g. at lat {ds[LAT].values.flat[i]:.4g}, lon {ds[LON].values.flat[i]:.4g} "
            f"({covered[i] / fine_area[i]:.0%} covered); give a coarse archive around the domain"
        )
    index, weight, dropped = _top_four(f, flat[c], area, n)
    over = np.flatnonzero(dropped > MAX_DROPPED * fine_area)
    if over.size:
        raise CoordinateError(
            f"conservative regridding: {over.size} fine cell(s) overlap more than four coarse "
            f"cells (by up to {np.max(dropped[over] / fine_area[over]):.2g} of their area; "
            "fine cells wider than coarse ones); use regrid='bilinear'"
        )
    weight /= weight.sum(axis=1, keepdims=True)
    shape = (ds.sizes[Y], ds.sizes[X], 4)
    return index.reshape(shape), weight.reshape(shape)
