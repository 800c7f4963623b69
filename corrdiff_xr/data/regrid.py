"""Lazy bilinear regridding of the coarse inputs onto the fine grid.

The weights are computed once from coordinates only (:func:`bilinear_weights`): for every
fine pixel, the flat indices of its four surrounding coarse points and their bilinear weights,
each an ``(y, x, 4)`` array. Applying them (:func:`regrid`) is one task per dask block, so
regridding a multi-GB archive is a lazy graph with one task per time chunk and fine spatial
chunk; no array data is read until the result is computed. When the weights factor by axis
(any rectilinear fine grid) and the coarse grid is small, a block is two small matrix
products ``Wy @ field @ Wx.T``; otherwise four ``np.take`` gathers and fused multiply-adds on
corner-major tables. float32 fields are interpolated in float32, anything else in float64.
The same four-corner tables carry ``"nearest"`` and ``"conservative"`` weights too
(:mod:`corrdiff_xr.data.regrid_methods`; between curvilinear grids by polygon overlaps,
:mod:`corrdiff_xr.data.regrid_curvilinear`), chosen per pair by the dataset attribute
``corrdiff_xr_regrid``.

Grids are paired by position, never by array index (:func:`grid_method`):

* ``"latlon"``: ``y_coarse``/``x_coarse`` are ``latitude``/``longitude`` (a regular lat/lon
  grid such as ERA5): interpolate at the fine 2-D ``lat``/``lon``. Longitudes are wrapped
  into the coarse range, and a global coarse grid is treated as periodic.
* ``"crs"``: the coarse grid has its own CRS (the scalar coordinate ``crs_coarse``, CF
  grid-mapping attributes; :mod:`corrdiff_xr.data.grids`): the fine ``lat``/``lon`` are
  projected into it with pyproj and interpolated there, whatever the fine grid's projection.
* ``"projected"``: a coordinate system shared with the fine grid (same ``standard_name`` or
  ``axis``, same units): interpolate at the fine 1-D ``y``/``x``, once the coarse cells'
  ``lat_coarse``/``lon_coarse`` are shown to agree with the fine grid's at the same ``y``/``x``.
* ``"sphere"``: a curvilinear coarse grid known only by its 2-D ``lat_coarse``/``lon_coarse``:
  linear interpolation on Delaunay triangles of its points, in an azimuthal equidistant plane
  about the fine domain (the weights keep the four-corner form, the fourth weighing 0).

Bare index axes without latitude/longitude are refused.

The coarse grid must cover the fine domain. Points up to half a coarse cell beyond the
outermost coarse centres are accepted and take the edge value (so a coarse grid made by block
averaging the fine one, whose centres sit inside the fine domain, is usable); anything further
out raises :class:`~corrdiff_xr.data.layout.CoverageError` naming the edge and the values.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import dask.array as da
import numpy as np
import xarray as xr

from corrdiff_xr.data.layout import CoordinateError, CoverageError, MissingVariableError
from corrdiff_xr.data.positions import (
    coverage_mask,
    fine_positions,
    grid_method,
    half_cell_bounds,
    sphere_weights,
    wrapped,
)
from corrdiff_xr.data.regrid_curvilinear import conservative_weights
from corrdiff_xr.data.regrid_methods import (
    REGRID_ATTR,
    check_method,
    conservative_axis,
    is_rectilinear,
    rectilinear,
)
from corrdiff_xr.dims import LAT, LON, TIME, X_COARSE, Y_COARSE, X, Y

__all__ = [
    "BilinearWeights",
    "bilinear_weights",
    "coverage_mask",
    "fine_positions",
    "grid_method",
    "regrid",
]

_EDGES = {"latitude": ("south", "north"), "longitude": ("west", "east")}


@dataclass(frozen=True, eq=False)
class BilinearWeights:
    """Bilinear interpolation weights from a coarse grid to fine pixels.

    Attributes
    ----------
    index
        ``(y, x, 4)`` flat indices into the ``(y_coarse, x_coarse)`` field (int32 when it fits).
    weight
        ``(y, x, 4)`` float64 weights, summing to 1 over the last axis.
    coarse_shape
        ``(len(y_coarse), len(x_coarse))`` the indices refer to.
    method
        How the grids are placed: ``"latlon"``, ``"crs"``, ``"projected"`` or ``"sphere"``.
    scheme
        ``"bilinear"``, ``"nearest"`` or ``"conservative"``
        (:mod:`corrdiff_xr.data.regrid_methods`).
    """

    index: np.ndarray
    weight: np.ndarray
    coarse_shape: tuple[int, int]
    method: str
    scheme: str = "bilinear"

    @property
    def fine_shape(self) -> tuple[int, int]:
        return self.index.shape[:2]

    def isel(
        self, y: slice | np.ndarray = slice(None), x: slice | np.ndarray = slice(None)
    ) -> BilinearWeights:
        """Weights for a sub-window of the fine grid (no recomputation)."""
        index = self.index[y][:, x]
        weight = self.weight[y][:, x]
        return BilinearWeights(index, weight, self.coarse_shape, self.method, self.scheme)

    def apply(self, field: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
        """Regrid a numpy array ``(..., y_coarse, x_coarse)`` -> ``(..., y, x)`` eagerly.

        float32 fields are interpolated in float32 (float32 weights), anything else in
        float64. ``out`` (shape ``(..., y, x)``, any float dtype, each ``(y, x)`` plane
        contiguous) receives the result without a further copy, e.g. one channel of a batch.
        """
        field = np.asarray(field)
        single = field.dtype == np.float32
        if self._separable is not None:
            wy, wxt = self._separable[0 if single else 1]
            f = field.astype(wy.dtype, copy=False)
            if out is None:
                return np.matmul(np.matmul(wy, f), wxt)
            np.matmul(np.matmul(wy, f), wxt, out=out)
            return out
        index, weight32, weight64 = self._flat
        return _gather(field, index, weight32 if single else weight64, self.fine_shape, out=out)

    @cached_property
    def _separable(self) -> tuple[tuple[np.ndarray, np.ndarray], ...] | None:
        """``((Wy, Wx.T) float32, (Wy, Wx.T) float64)`` when the weights factor by axis.

        A fine grid whose rows share coarse rows and fractions, and columns coarse columns
        (any rectilinear grid, including a regular lat/lon one), regrids as two small matrix
        products ``Wy @ field @ Wx.T``, ~10x faster than the gather on BLAS. Used only when
        that costs at most 64 multiply-adds per fine pixel (small coarse grids); else None.
        """
        (ny, nx), (ncy, ncx) = self.fine_shape, self.coarse_shape
        if ncy * ncx / nx + ncx > 64:
            return None
        row, col = self.index // ncx, self.index % ncx
        y0, y1, x0, x1 = row[:, 0, 0], row[:, 0, 2], col[0, :, 0], col[0, :, 1]
        fy = self.weight[:, 0, 2] + self.weight[:, 0, 3]
        fx = self.weight[0, :, 1] + self.weight[0, :, 3]
        rebuilt_row = np.stack([y0, y0, y1, y1], axis=-1)[:, None, :]
        rebuilt_col = np.stack([x0, x1, x0, x1], axis=-1)[None, :, :]
        gy, gx = (1 - fy)[:, None], fy[:, None]
        hx, kx = (1 - fx)[None, :], fx[None, :]
        rebuilt_w = np.stack([gy * hx, gy * kx, gx * hx, gx * kx], axis=-1)
        if not (
            (row == rebuilt_row).all()
            and (col == rebuilt_col).all()
            and np.allclose(self.weight, rebuilt_w, rtol=0, atol=1e-12)
        ):
            return None
        wy = np.zeros((ny, ncy))
        np.add.at(wy, (np.arange(ny), y0), 1 - fy)
        np.add.at(wy, (np.arange(ny), y1), fy)
        wx = np.zeros((nx, ncx))
        np.add.at(wx, (np.arange(nx), x0), 1 - fx)
        np.add.at(wx, (np.arange(nx), x1), fx)
        wxt = np.ascontiguousarray(wx.T)
        return (wy.astype(np.float32), wxt.astype(np.float32)), (wy, wxt)

    @cached_property
    def _flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # (4, y*x) corner-major: each corner's indices and weights are one contiguous row,
        # so a regrid is four np.take calls and fused multiply-adds; built once, then reused
        index = np.ascontiguousarray(self.index.reshape(-1, 4).T, dtype=np.intp)
        weight = np.ascontiguousarray(self.weight.reshape(-1, 4).T, dtype=np.float64)
        return index, weight.astype(np.float32), weight


def _gather(
    block: np.ndarray,
    index: np.ndarray,
    weight: np.ndarray,
    fine_shape: tuple[int, int],
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``sum_k block.flat[index[k]] * weight[k]`` for corner-major ``(4, npix)`` tables."""
    block = np.asarray(block)
    lead = block.shape[:-2]
    flat = block.reshape(lead + (-1,)).astype(weight.dtype, copy=False)
    acc = np.take(flat, index[0], axis=-1)
    acc *= weight[0]
    tmp = np.empty_like(acc)
    for k in range(1, index.shape[0]):
        np.take(flat, index[k], axis=-1, out=tmp)
        tmp *= weight[k]
        acc += tmp
    acc = acc.reshape(lead + tuple(fine_shape))
    if out is None:
        return acc
    out[...] = acc
    return out


def _apply_separable(block: np.ndarray, wy: np.ndarray, wxt: np.ndarray) -> np.ndarray:
    return np.matmul(np.matmul(wy, np.asarray(block).astype(wy.dtype, copy=False)), wxt)


def _apply_block(block: np.ndarray, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    # one dask block: index/weight are (y, x, 4) windows of the tables
    dtype = np.result_type(block.dtype, np.float32)
    ny, nx = index.shape[:2]
    index = np.ascontiguousarray(index.reshape(-1, 4).T, dtype=np.intp)
    weight = np.ascontiguousarray(weight.reshape(-1, 4).T, dtype=dtype)
    return _gather(block, index, weight, (ny, nx))


def _axis_weights(
    coarse: np.ndarray,
    query: np.ndarray,
    *,
    coarse_name: str,
    fine_name: str,
    kind: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower index, upper index and upper weight along one coarse axis."""
    c, query, periodic, descending = wrapped(coarse, query, coarse_name, kind)
    n = c.size
    if periodic:
        ext = np.append(c, c[0] + 360.0)
        i = np.clip(np.searchsorted(ext, query, side="right") - 1, 0, n - 1)
        hi_val = ext[i + 1]
        frac = np.clip((query - ext[i]) / (hi_val - ext[i]), 0.0, 1.0)
        i0, i1 = i, (i + 1) % n
    else:
        lo, hi, tol = half_cell_bounds(c)
        low_edge, high_edge = _EDGES.get(kind, ("lower", "upper"))
        qmin, qmax = float(np.nanmin(query)), float(np.nanmax(query))
        if qmin < lo - tol:
            raise CoverageError(
                f"the coarse grid does not cover the fine domain at its {low_edge} edge: fine "
                f"'{fine_name}' reaches {qmin:.6g} but coarse '{coarse_name}' starts at "
                f"{c[0]:.6g} (accepting down to {lo:.6g}, half a cell beyond)"
            )
        if qmax > hi + tol:
            raise CoverageError(
                f"the coarse grid does not cover the fine domain at its {high_edge} edge: fine "
                f"'{fine_name}' reaches {qmax:.6g} but coarse '{coarse_name}' ends at "
                f"{c[-1]:.6g} (accepting up to {hi:.6g}, half a cell beyond)"
            )
        i = np.clip(np.searchsorted(c, query, side="right") - 1, 0, n - 2)
        frac = np.clip((query - c[i]) / (c[i + 1] - c[i]), 0.0, 1.0)
        i0, i1 = i, i + 1
    if descending:
        i0, i1 = n - 1 - i0, n - 1 - i1
    return i0, i1, frac


def bilinear_weights(ds: xr.Dataset, *, scheme: str | None = None) -> BilinearWeights:
    """Weights taking ``ds``'s coarse grid to its fine grid (coordinates only are read).

    ``scheme``: ``"bilinear"``, ``"nearest"`` or ``"conservative"``; default the dataset's
    attribute :data:`~corrdiff_xr.data.regrid_methods.REGRID_ATTR`, else bilinear.

    Raises
    ------
    CoverageError
        When the coarse grid does not cover the fine domain (naming the edge and values).
    CoordinateError, MissingVariableError
        When a needed coordinate is absent, mis-shaped, non-monotonic or holds NaNs, or the
        grids cannot be placed relative to each other.
    """
    scheme = check_method(ds.attrs.get(REGRID_ATTR, "bilinear") if scheme is None else scheme)
    method = grid_method(ds)
    ncy, ncx = ds.sizes[Y_COARSE], ds.sizes[X_COARSE]
    if method == "sphere" and scheme == "conservative":
        index, weight = conservative_weights(ds)
    elif method == "sphere":
        index, weight = sphere_weights(ds, scheme=scheme)
    else:
        qy, qx, names, kinds = fine_positions(ds)
        y0, y1, fy = _axis_weights(
            ds[Y_COARSE].values, qy, coarse_name=Y_COARSE, fine_name=names[0], kind=kinds[0]
        )
        x0, x1, fx = _axis_weights(
            ds[X_COARSE].values, qx, coarse_name=X_COARSE, fine_name=names[1], kind=kinds[1]
        )
        if scheme == "conservative" and not (is_rectilinear(qy, 0) and is_rectilinear(qx, 1)):
            index, weight = conservative_weights(ds)  # curvilinear; the bounds checks above hold
        else:
            if scheme == "nearest":  # the nearer of the two centres along each axis
                fy, fx = (fy >= 0.5).astype(float), (fx >= 0.5).astype(float)
            elif scheme == "conservative":  # the bounds checks above hold; now the overlaps
                y0, y1, fy = _conservative(ds, Y_COARSE, qy, 0, names[0], kinds[0])
                x0, x1, fx = _conservative(ds, X_COARSE, qx, 1, names[1], kinds[1])
            index = np.stack([y0 * ncx + x0, y0 * ncx + x1, y1 * ncx + x0, y1 * ncx + x1], -1)
            weight = np.stack(
                [(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], axis=-1
            )  # fmt: skip
    shape = (ds.sizes[Y], ds.sizes[X], 4)
    return BilinearWeights(
        # int32 halves the weights' memory on large fine grids
        index.reshape(shape).astype(np.int32 if ncx * ncy < 2**31 else np.int64),
        weight.reshape(shape),
        (ncy, ncx),
        method,
        scheme,
    )


def _conservative(
    ds: xr.Dataset, coarse_name: str, q: np.ndarray, axis: int, name: str, kind: str
) -> Iterator[np.ndarray]:
    """Conservative (y, x) tables along one axis of a fine grid rectilinear in the coarse axes."""
    line = rectilinear(q, axis, name)
    c, line, periodic, descending = wrapped(ds[coarse_name].values, line, coarse_name, kind)
    order = np.arange(c.size)
    if periodic:  # a global axis: unwrap both about the fine domain (it may span the seam)
        ref = float(np.angle(np.exp(1j * np.deg2rad(line)).mean(), deg=True))
        line, c = (ref + np.mod(v - ref + 180.0, 360.0) - 180.0 for v in (line, c))
        order = np.argsort(c, kind="stable")
        c = c[order]
    i0, i1, frac = conservative_axis(c, line, latitude=kind == "latitude", name=name)
    i0, i1 = order[i0], order[i1]
    if descending:
        i0, i1 = c.size - 1 - i0, c.size - 1 - i1
    shape = (-1, 1) if axis == 0 else (1, -1)
    return (np.broadcast_to(v.reshape(shape), q.shape) for v in (i0, i1, frac))


def _fine_chunks(ds: xr.Dataset) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Spatial chunks of the first chunked fine variable (else one chunk)."""
    for var in ds.data_vars.values():
        if var.dims[-2:] == (Y, X) and var.chunks is not None:
            return var.chunks[-2], var.chunks[-1]
    return (ds.sizes[Y],), (ds.sizes[X],)


def regrid(
    ds: xr.Dataset,
    variables: list[str] | tuple[str, ...] | None = None,
    *,
    weights: BilinearWeights | None = None,
) -> xr.Dataset:
    """Lazily regrid the coarse inputs of ``ds`` to the fine grid ``(time, y, x)``.

    Parameters
    ----------
    ds
        A canonical Dataset (coarse and fine coordinates).
    variables
        Names of ``(time, y_coarse, x_coarse)`` variables; default all of them.
    weights
        Precomputed :func:`bilinear_weights` of ``ds`` (computed here when omitted).

    Returns
    -------
    xarray.Dataset
        The variables on ``(time, y, x)`` with the fine coords, dask-backed, chunked like the
        input in time and like the fine targets in space; float32 stays float32.
    """
    if variables is None:
        variables = [
            str(n) for n, v in ds.data_vars.items() if v.dims == (TIME, Y_COARSE, X_COARSE)
        ]
    weights = bilinear_weights(ds) if weights is None else weights
    if weights.coarse_shape != (
        ds.sizes[Y_COARSE],
        ds.sizes[X_COARSE],
    ) or weights.fine_shape != (
        ds.sizes[Y],
        ds.sizes[X],
    ):
        raise ValueError(
            f"weights map {weights.coarse_shape} -> {weights.fine_shape} but the dataset has "
            f"coarse {(ds.sizes[Y_COARSE], ds.sizes[X_COARSE])} and fine {(ds.sizes[Y], ds.sizes[X])}"
        )
    ychunks, xchunks = _fine_chunks(ds)
    index = da.from_array(weights.index, chunks=(ychunks, xchunks, 4))
    weight = da.from_array(weights.weight, chunks=(ychunks, xchunks, 4))
    separable = None
    if weights._separable is not None:  # same products as BilinearWeights.apply, block by block
        separable = [
            (da.from_array(wy, chunks=(ychunks, -1)), da.from_array(wxt, chunks=(-1, xchunks)))
            for wy, wxt in weights._separable
        ]
    out = {}
    for name in variables:
        if name not in ds.data_vars:
            raise MissingVariableError(f"input variable '{name}' is not in the dataset")
        var = ds[name]
        if var.dims != (TIME, Y_COARSE, X_COARSE):
            raise CoordinateError(
                f"variable '{name}' has dims {var.dims}; only (time, y_coarse, x_coarse) inputs are regridded"
            )
        data = var.data if var.chunks is not None else da.from_array(var.values, chunks=(1, -1, -1))
        data = data.rechunk({1: -1, 2: -1})  # a block needs the whole coarse field
        dtype = np.result_type(data.dtype, np.float32)
        if separable is not None:
            wy, wxt = separable[0 if data.dtype == np.float32 else 1]
            fine = da.blockwise(
                _apply_separable,
                "tyx",
                data,
                "tab",
                wy,
                "ya",
                wxt,
                "bx",
                dtype=wy.dtype,
                concatenate=True,
            )
        else:
            fine = da.blockwise(
                _apply_block,
                "tyx",
                data,
                "tab",
                index,
                "yxk",
                weight,
                "yxk",
                dtype=dtype,
                concatenate=True,
            )
        attrs = dict(var.attrs)
        attrs["regridding"] = f"{weights.scheme} from (y_coarse, x_coarse), method {weights.method}"
        out[name] = ((TIME, Y, X), fine, attrs)
    coords = {k: ds.coords[k] for k in (TIME, Y, X, LAT, LON) if k in ds.coords}
    return xr.Dataset(out, coords=coords)
