"""Regridding choices beyond bilinear, and coarse inputs made from the fine archive.

Every scheme keeps the four-corner form of :class:`~corrdiff_xr.data.regrid.BilinearWeights`
(the coarse grid placed on the fine pixels by geography, :mod:`corrdiff_xr.data.positions`),
so training, inference and scoring regrid the same way whatever the choice:

* ``"bilinear"`` (default): linear in each coarse axis.
* ``"nearest"``: the nearest coarse centre along each coarse axis (the bilinear fractions
  rounded); on a curvilinear coarse grid the nearest coarse point in the plane.
* ``"conservative"``: first-order conservative: a fine cell takes the mean of the coarse
  cells it overlaps, weighted by the overlap's area; the integral over the fine domain is
  preserved and constants are exact. When the fine grid is rectilinear in the coarse grid's
  axes the weights are computed axis by axis (:func:`conservative_axis`: cell edges halfway
  between centres; on latitude the measure is ``sin(lat)``, so areas are the sphere's), and a
  fine cell may overlap at most two coarse cells per axis (fine cells smaller than coarse
  ones, as in downscaling). When either grid is curvilinear (a rotated-pole or Lambert grid
  against another) they come from polygon overlaps in an equal-area plane
  (:mod:`corrdiff_xr.data.regrid_curvilinear`; needs shapely:
  ``pip install corrdiff_xr[regrid]``), and a fine cell may overlap at most four coarse cells.

The method is recorded as the dataset attribute :data:`REGRID_ATTR`, which
:func:`~corrdiff_xr.data.regrid.bilinear_weights` reads, so a pair keeps its choice through
:func:`~corrdiff_xr.data.open_pair` and selections.

:func:`coarsened` makes coarse inputs from the fine archive: block means of its fields over
``{"y": ny, "x": nx}`` fine cells, on a coarse grid whose coordinates are the blocks' means
(``y``/``x`` and, as unit vectors, latitude/longitude), then placed back on the fine grid as
any coarse archive is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeGuard

import numpy as np
import xarray as xr

from corrdiff_xr.data.layout import CoordinateError, DataError, MissingVariableError
from corrdiff_xr.dims import LAT, LAT_COARSE, LON, LON_COARSE, TIME, X_COARSE, Y_COARSE, X, Y

__all__ = [
    "COARSEN_KEYS",
    "METHODS",
    "REGRID_ATTR",
    "check_method",
    "coarsened",
    "conservative_axis",
    "is_coarsen_spec",
    "is_rectilinear",
    "rectilinear",
]

#: dataset attribute naming the regridding method of the coarse inputs
REGRID_ATTR = "corrdiff_xr_regrid"
METHODS = ("bilinear", "nearest", "conservative")
#: the keys of a coarse spec built from the fine archive
COARSEN_KEYS = ("coarsen", "variables")


def check_method(method: object, what: str = "regrid") -> str:
    """The method name, or one line naming the option and the choices."""
    if not isinstance(method, str) or method not in METHODS:
        raise DataError(f"{what}={method!r} is not a regridding method; use one of {METHODS}")
    return method


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges halfway between monotonic centres, the outer ones half a cell beyond."""
    mid = 0.5 * (centres[1:] + centres[:-1])
    return np.concatenate([[2 * centres[0] - mid[0]], mid, [2 * centres[-1] - mid[-1]]])


def conservative_axis(
    coarse: np.ndarray, fine: np.ndarray, *, latitude: bool, name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper coarse index and the upper cell's weight for each fine cell.

    ``coarse`` is ascending; ``fine`` monotonic (either way). The weights are the overlaps
    (in ``sin(lat)`` on latitude) normalised over the part of the fine cell the coarse cells
    cover.
    """
    if fine.size < 2:
        raise CoordinateError(f"conservative regridding needs >= 2 fine cells along '{name}'")
    ce, fe = _edges(coarse), _edges(fine)
    lo, hi = np.minimum(fe[:-1], fe[1:]), np.maximum(fe[:-1], fe[1:])
    if latitude:  # equal steps of sin(lat) are equal areas on the sphere
        ce, lo, hi = (np.sin(np.deg2rad(np.clip(v, -90, 90))) for v in (ce, lo, hi))
    n = coarse.size
    i = np.clip(np.searchsorted(ce, lo, side="right") - 1, 0, n - 1)
    j = np.minimum(i + 1, n - 1)
    third = (i + 2 < n) & (hi > ce[np.minimum(i + 2, n)] + 1e-9 * (ce[-1] - ce[0]))
    if third.any():
        raise CoordinateError(
            f"conservative regridding: some fine cells along '{name}' overlap more than two "
            "coarse cells (fine cells wider than coarse ones); use regrid='bilinear'"
        )
    low = np.clip(np.minimum(hi, ce[i + 1]) - np.maximum(lo, ce[i]), 0, None)
    up = np.where(j > i, np.clip(np.minimum(hi, ce[j + 1]) - np.maximum(lo, ce[j]), 0, None), 0)
    total = low + up
    # a fine cell beyond the outer coarse edge (accepted up to half a cell) takes the edge
    frac = np.where(total > 0, up / np.where(total > 0, total, 1), (lo >= ce[-1]).astype(float))
    return i, j, frac


def is_rectilinear(q: np.ndarray, axis: int) -> bool:
    """Whether fine positions ``q (y, x)`` on one coarse axis vary along ``axis`` only, and
    monotonically."""
    line = q[:, 0] if axis == 0 else q[0, :]
    other = q - (line[:, None] if axis == 0 else line[None, :])
    step = np.diff(line)
    return bool(
        np.allclose(other, 0, atol=1e-9 * max(np.ptp(line), 1.0))
        and (np.all(step > 0) or np.all(step < 0))
    )


def rectilinear(q: np.ndarray, axis: int, name: str) -> np.ndarray:
    """The 1-D positions of a fine grid that is rectilinear in the coarse axes, else refuse."""
    if not is_rectilinear(q, axis):
        raise CoordinateError(
            f"axis-by-axis conservative weights need the fine grid rectilinear in the coarse "
            f"grid's axes, but fine '{name}' varies along both y and x (curvilinear); "
            "corrdiff_xr.data.regrid_curvilinear.conservative_weights handles that"
        )
    return q[:, 0] if axis == 0 else q[0, :]


def is_coarsen_spec(source: object) -> TypeGuard[Mapping[str, Any]]:
    """Whether a coarse archive spec asks for block means of the fine archive."""
    return isinstance(source, Mapping) and "coarsen" in source


def _unit_mean(
    lat: np.ndarray, lon: np.ndarray, blocks: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Block-mean latitude/longitude through unit vectors (right across the dateline)."""
    phi, lam = np.deg2rad(lat), np.deg2rad(lon)
    xyz = [blocks(v) for v in (np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi))]
    out_lat = np.rad2deg(np.arctan2(xyz[2], np.hypot(xyz[0], xyz[1])))
    out_lon = np.rad2deg(np.arctan2(xyz[1], xyz[0]))
    # keep the fine archive's longitude convention (0..360 stays 0..360)
    ref = float(np.mean(lon))
    return out_lat, ref + (out_lon - ref + 180.0) % 360.0 - 180.0


def coarsened(fine: xr.Dataset, spec: Mapping[str, Any], what: str = "coarse") -> xr.Dataset:
    """Coarse inputs ``(time, y_coarse, x_coarse)``: block means of fine fields (lazy).

    ``spec``: ``{"coarsen": {"y": ny, "x": nx}, "variables": {fine name: input name}}``.
    """
    from corrdiff_xr.data.archive_spec import check_keys

    check_keys(spec, COARSEN_KEYS, what)
    factors = spec["coarsen"]
    check_keys(factors if isinstance(factors, Mapping) else {}, (Y, X), f"{what}: coarsen")
    if not isinstance(factors, Mapping) or set(factors) != {Y, X}:
        raise DataError(f"{what}: coarsen must be {{'y': ny, 'x': nx}} (fine cells per block)")
    for dim, k in factors.items():
        if not isinstance(k, int) or isinstance(k, bool) or k < 1 or fine.sizes[dim] % k:
            raise DataError(
                f"{what}: coarsen {dim}={k!r} must be a positive whole number dividing the fine "
                f"'{dim}' size {fine.sizes[dim]}; pick another factor or a window that fits"
            )
    variables = spec.get("variables")
    if not isinstance(variables, Mapping) or not variables:
        raise DataError(
            f"{what}: coarsen needs 'variables', {{fine name: input name}}, e.g. "
            "{'t2m': 't2m_coarse'}"
        )
    ky, kx = factors[Y], factors[X]
    ny, nx = fine.sizes[Y] // ky, fine.sizes[X] // kx

    def blocks(v: np.ndarray) -> np.ndarray:
        return np.asarray(v, np.float64).reshape(ny, ky, nx, kx).mean(axis=(1, 3))

    out = {}
    for name, new in variables.items():
        if name not in fine.data_vars:
            raise MissingVariableError(
                f"{what}: coarsen variable '{name}' is not in the fine archive"
            )
        var = fine[name].transpose(TIME, Y, X)
        mean = var.coarsen({Y: ky, X: kx}).mean().data
        attrs = dict(var.attrs, cell_methods=f"{Y}: {X}: mean over {ky}x{kx} fine cells")
        out[new] = ((TIME, Y_COARSE, X_COARSE), mean, attrs)
    lat, lon = _unit_mean(fine[LAT].values, fine[LON].values, blocks)
    coords = {
        TIME: fine[TIME],
        Y_COARSE: (Y_COARSE, fine[Y].values.astype(float).reshape(ny, ky).mean(1), fine[Y].attrs),
        X_COARSE: (X_COARSE, fine[X].values.astype(float).reshape(nx, kx).mean(1), fine[X].attrs),
        LAT_COARSE: ((Y_COARSE, X_COARSE), lat, fine[LAT].attrs),
        LON_COARSE: ((Y_COARSE, X_COARSE), lon, fine[LON].attrs),
    }
    return xr.Dataset(out, coords=coords)
