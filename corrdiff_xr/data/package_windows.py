"""Package inputs taken from a time window, and input grids placed as images.

Two ways a published package prepares its inputs that :func:`~corrdiff_xr.data.package_pair.
package_pair` alone does not cover, as plain lazy operations on a pair's dataset:

* :func:`window_inputs`: the network sees each input at several times around an *anchor*
  (the CorrDiff CMIP6 -> ERA5 model: daily fields at -24, 0 and +24 hours of the day's 12:00
  UTC) and its outputs are valid at ``anchor + lead`` for a few leads. The result is on the
  valid-time axis, one variable per (input, offset), each a lazy selection of the archive's
  steps (a step read by several valid times is one dask chunk read several times);
* :func:`place_as_image`: the package's code resizes the input array to the output grid's
  shape as an image (``torch.nn.functional.interpolate(mode="bilinear",
  align_corners=False)``), whatever the coordinates say. The coarse grid is then placed on
  the fine grid by pixel index: coarse cell ``j`` of ``n`` at fine row ``(j + 0.5) N / n -
  0.5`` of ``N``; bilinear weights in that space, with the nearest cell half a cell beyond
  the outer centres (:mod:`corrdiff_xr.data.regrid`), are exactly that resize's. The
  geography stays in the fine ``lat``/``lon``; ``lat_coarse``/``lon_coarse`` say where the
  resize puts each input cell.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from corrdiff_xr.data.layout import TimeAxisError
from corrdiff_xr.dims import (
    COARSE_DIMS,
    LAT,
    LAT_COARSE,
    LON,
    LON_COARSE,
    TIME,
    X_COARSE,
    Y_COARSE,
    X,
    Y,
)

__all__ = ["place_as_image", "window_inputs"]


def window_inputs(
    ds: xr.Dataset,
    shifted: Mapping[str, tuple[str, np.timedelta64]],
    leads: Sequence[np.timedelta64],
) -> xr.Dataset:
    """``ds`` on the valid-time axis, with inputs taken at offsets from each anchor.

    Parameters
    ----------
    ds
        A pair's dataset whose ``time`` labels are the anchors (e.g. daily 12:00 UTC).
    shifted
        ``{new name: (variable of ds, offset)}``: the new variable at valid time
        ``anchor + lead`` holds the variable at ``anchor + offset``.
    leads
        Valid times are ``anchor + lead``; anchors are the times of ``ds`` at which every
        offset lies in ``ds``.

    Returns
    -------
    xarray.Dataset
        The new variables on ``(time, ...)`` with ``time`` the valid times, plus the variables
        of ``ds`` without ``time`` (static fields); lazy.
    """
    times = ds[TIME].values.astype("datetime64[ns]")
    offsets = sorted({np.timedelta64(o, "ns") for _, o in shifted.values()})
    present = set(times.astype(np.int64).tolist())
    anchors = [t for t in times if all(int((t + o).astype(np.int64)) in present for o in offsets)]
    if not anchors:
        hours = [int(o // np.timedelta64(1, "h")) for o in offsets]
        raise TimeAxisError(
            f"no time of the archive has its steps at {hours} hours in "
            f"the archive ({len(times)} steps from {times[0]} to {times[-1]}); give the days "
            "around the period wanted"
        )
    pairs = sorted((a + np.timedelta64(lead, "ns"), a) for a in anchors for lead in leads)
    valid = np.array([v for v, _ in pairs])
    if np.unique(valid).size != valid.size:
        raise TimeAxisError(
            "two anchors give the same valid time: the anchors (the archive's times, "
            f"{times[0]}, {times[1] if len(times) > 1 else ''} ...) must be further apart than "
            "the lead times span; select one time a day (12:00 UTC)"
        )
    anchor = np.array([a for _, a in pairs])
    out = {}
    for name, (source, offset) in shifted.items():
        at = xr.DataArray(anchor + np.timedelta64(offset, "ns"), dims=TIME)
        var = ds[source].sel({TIME: at}).assign_coords({TIME: valid})
        out[name] = var.assign_attrs(ds[source].attrs)
    static = {n: v for n, v in ds.data_vars.items() if TIME not in v.dims}
    coords = {k: v for k, v in ds.coords.items() if TIME not in v.dims}
    return xr.Dataset({**out, **static}, coords={**coords, TIME: valid}, attrs=ds.attrs)


def _image_axis(n_coarse: int, n_fine: int, axis: str, what: str) -> tuple:
    """Coarse cell centres ``(j + 0.5) N / n - 0.5`` in fine pixel units."""
    centres = (np.arange(n_coarse) + 0.5) * (n_fine / n_coarse) - 0.5
    return centres, {"axis": axis, "long_name": f"input cell centre in output grid {what}s"}


def _placed(lat: np.ndarray, lon: np.ndarray, yc: np.ndarray, xc: np.ndarray) -> tuple:
    """Latitude/longitude (degrees) of the fine grid ``lat``/``lon`` (y, x) at fractional
    pixel positions ``yc`` x ``xc``: unit vectors interpolated bilinearly, renormalised."""
    from scipy.interpolate import RegularGridInterpolator

    phi, lam = np.deg2rad(lat), np.deg2rad(lon)
    xyz = np.stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)], -1)
    grid = (np.arange(lat.shape[0], dtype=float), np.arange(lat.shape[1], dtype=float))
    points = np.stack(np.meshgrid(yc, xc, indexing="ij"), axis=-1)
    v = RegularGridInterpolator(grid, xyz)(points)
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    return np.rad2deg(np.arcsin(np.clip(v[..., 2], -1, 1))), np.rad2deg(
        np.arctan2(v[..., 1], v[..., 0])
    )


def place_as_image(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with its coarse grid placed on the fine grid by pixel index (module docstring):
    ``y``/``x`` become pixel indices, ``y_coarse``/``x_coarse`` the coarse cell centres in
    those units and ``lat_coarse``/``lon_coarse`` where that puts the cells on the globe (not
    the input grid's own coordinates: the resize ignores those); ``lat``/``lon`` (fine) stay."""
    ny, nx = ds.sizes[Y], ds.sizes[X]
    yc, y_attrs = _image_axis(ds.sizes[Y_COARSE], ny, "Y", "row")
    xc, x_attrs = _image_axis(ds.sizes[X_COARSE], nx, "X", "column")
    lat_c, lon_c = _placed(ds[LAT].values, ds[LON].values, yc, xc)
    why = "where resizing the input grid as an image onto the output grid puts the input cells"
    return ds.assign_coords(
        {
            Y: (Y, np.arange(ny, dtype=np.float64), {"axis": "Y", "long_name": "output grid row"}),
            X: (
                X,
                np.arange(nx, dtype=np.float64),
                {"axis": "X", "long_name": "output grid column"},
            ),
            Y_COARSE: (Y_COARSE, yc, y_attrs),
            X_COARSE: (X_COARSE, xc, x_attrs),
            LAT_COARSE: (COARSE_DIMS, lat_c, {"units": "degrees_north", "comment": why}),
            LON_COARSE: (COARSE_DIMS, lon_c, {"units": "degrees_east", "comment": why}),
        }
    )
