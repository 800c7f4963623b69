"""Fractions skill score over neighbourhood sizes and event thresholds (private; see ``scoring``).

The FSS (Roberts and Lean 2008, MWR 136, 78) compares the fraction of each ``n x n``
neighbourhood where an event happens in the forecast and in the truth. For an ensemble the
forecast fraction is the mean over members of their fractions, the neighbourhood ensemble
probability (Schwartz et al. 2010, WAF 25, 263); one member gives the classic FSS.

Each 2-D field gives three means over its windows, ``(P_f - P_o)^2``, ``P_f^2`` and
``P_o^2``; these are averaged over ``dim`` and the score formed after,
``FSS = 1 - mean((P_f - P_o)^2) / (mean(P_f^2) + mean(P_o^2))``, the aggregation
``scores.spatial.fss_2d`` uses (Mittermaier 2021, MWR 149, 3491), so chunks combine exactly.
This is written here, not taken from ``scores``, because that one has no ensembles, no
missing truth and no area weights; the tests check that the two agree where both apply.

Windows lie inside the domain (no padding), as scores' default. A window is used only where
the truth has no NaN; with area ``weights`` (over the spatial dims) fractions are area
fractions and windows count by their area. Events are ``value >= threshold``; with
``percentiles`` each field (each member and the truth, on the truth's valid points) is
thresholded at its own percentile, which removes the forecast's bias from the score.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import xarray as xr

from corrdiff_xr.dims import MEMBER, X, Y
from corrdiff_xr.scoring.common import Data, DataT, Dims, _back, _mean_dims, _prepare, _single_chunk
from corrdiff_xr.scoring.probabilistic import THRESHOLD, Thresholds, _thresholds

__all__ = ["fss", "fss_components"]

WINDOW = "window"
PERCENTILE = "percentile"
COMPONENT = "fss_component"
DEFAULT_WINDOWS = (1, 3, 9)
DEFAULT_PERCENTILES = (90.0,)


def _box_sums(field: np.ndarray, n: int) -> np.ndarray:
    """Sums over every n x n window inside the last two axes (summed-area table)."""
    ny, nx = field.shape[-2:]
    table = np.zeros(field.shape[:-2] + (ny + 1, nx + 1))
    table[..., 1:, 1:] = field.cumsum(axis=-2).cumsum(axis=-1)
    return table[..., n:, n:] - table[..., :-n, n:] - table[..., n:, :-n] + table[..., :-n, :-n]


def fss_components(
    observation: np.ndarray,
    forecasts: np.ndarray,
    weight: np.ndarray,
    *,
    thresholds: Sequence[float],
    windows: Sequence[int],
    percentile: bool = False,
) -> np.ndarray:
    """Window means of ``(P_f - P_o)^2``, ``P_f^2``, ``P_o^2`` for each field.

    ``observation`` is (..., ny, nx), ``forecasts`` (..., M, ny, nx), ``weight`` (ny, nx).
    Returns (..., thresholds, windows, 3); NaN where no window is free of missing truth.
    """
    obs = np.asarray(observation, dtype=np.float64)
    fc = np.asarray(forecasts, dtype=np.float64)
    valid = np.isfinite(obs) & np.isfinite(fc).all(axis=-3)
    w = np.where(valid, np.asarray(weight, dtype=np.float64), 0.0)
    out = np.full(obs.shape[:-2] + (len(thresholds), len(windows), 3), np.nan)
    t_obs: np.ndarray | float
    t_fc: np.ndarray | float
    for i, t in enumerate(thresholds):
        if percentile:
            gappy_obs = np.where(valid, obs, np.nan)
            gappy_fc = np.where(valid[..., None, :, :], fc, np.nan)
            with warnings.catch_warnings(action="ignore", category=RuntimeWarning):
                # an all-missing field gets a NaN threshold, no events
                t_obs = np.nanpercentile(gappy_obs, t, axis=(-2, -1), keepdims=True)
                t_fc = np.nanpercentile(gappy_fc, t, axis=(-2, -1), keepdims=True)
        else:
            t_obs = t_fc = t
        event_obs = (obs >= t_obs) & valid
        event_fc = ((fc >= t_fc) & valid[..., None, :, :]).mean(axis=-3)
        for j, n in enumerate(windows):
            area = _box_sums(w, n)
            complete = _box_sums((~valid).astype(np.float64), n) < 0.5
            with np.errstate(invalid="ignore", divide="ignore"):
                p_obs = _box_sums(w * event_obs, n) / area
                p_fc = _box_sums(w * event_fc, n) / area
                use = complete & (area > 0)
                win = np.where(use, area, 0.0)
                total = win.sum(axis=(-2, -1))
                for k, value in enumerate(((p_fc - p_obs) ** 2, p_fc**2, p_obs**2)):
                    mean = np.where(use, value, 0.0) * win
                    out[..., i, j, k] = mean.sum(axis=(-2, -1)) / np.where(total > 0, total, np.nan)
    return out


def _spatial_weight(
    weights: xr.DataArray | None, spatial_dims: tuple[str, str], template: xr.DataArray
) -> xr.DataArray:
    if weights is None:
        return xr.ones_like(template.isel({d: 0 for d in template.dims if d not in spatial_dims}))
    extra = [d for d in weights.dims if d not in spatial_dims]
    if extra:
        raise ValueError(
            f"fss weights must be over the spatial dims {spatial_dims} only, got dims "
            f"{weights.dims}; pass area_weights(forecast)"
        )
    return weights.fillna(0.0).reset_coords(drop=True)


def fss(
    forecast: DataT,
    truth: Data,
    *,
    windows: Sequence[int] | None = None,
    thresholds: Thresholds | None = None,
    percentiles: Sequence[float] | None = None,
    dim: Dims = None,
    weights: xr.DataArray | None = None,
    member_dim: str = MEMBER,
    spatial_dims: tuple[str, str] = (Y, X),
) -> DataT:
    """Fractions skill score, dims (``threshold`` or ``percentile``, ``window``, ...).

    Parameters
    ----------
    forecast, truth : Dataset or DataArray
        As for :func:`~corrdiff_xr.scoring.crps`; an ensemble scores by its neighbourhood
        ensemble probability.
    windows : sequence of int, optional
        Neighbourhood sizes in grid points (odd or even, at most the grid's size); default
        1, 3 and 9, those that fit.
    thresholds : sequence of float, or mapping of variable to sequence, optional
        Fixed event thresholds (``value >= threshold``) in each variable's units.
    percentiles : sequence of float, optional
        Percentiles (0-100) thresholding each field at its own value; the default when no
        ``thresholds`` are given is the 90th.
    dim : str or sequence of str, optional
        Dims to average the components over (the spatial dims are always consumed).
    weights : DataArray, optional
        Area weights over ``spatial_dims`` (e.g. :func:`~corrdiff_xr.scoring.area_weights`).

    Returns
    -------
    Dataset or DataArray
        1 is perfect, 0 no skill; ``0.5 + f_o / 2`` (``f_o`` the event frequency) is the
        usual "useful" level. NaN where no event occurs in forecast nor truth.
    """
    if thresholds is not None and percentiles is not None:
        raise ValueError("fss takes thresholds= or percentiles=, not both")
    fc, tr, _ = _prepare(forecast, truth, member_dim)
    for d in spatial_dims:
        if d not in fc.dims:
            raise ValueError(f"fss needs dimension {d!r}; dims are {tuple(fc.dims)}")
    size = min(fc.sizes[d] for d in spatial_dims)
    if windows is None:
        windows = [n for n in DEFAULT_WINDOWS if n <= size]
    windows = [int(n) for n in np.atleast_1d(windows)]
    too_big = [n for n in windows if n < 1 or n > size]
    if too_big:
        raise ValueError(f"fss windows {too_big} do not fit the {spatial_dims} grid")
    by_percentile = thresholds is None
    levels_dim = PERCENTILE if by_percentile else THRESHOLD
    dims = _mean_dims(fc, dim, member_dim)
    out = {}
    for name, var in fc.data_vars.items():
        values = (
            [float(q) for q in (percentiles or DEFAULT_PERCENTILES)]
            if by_percentile
            else _thresholds(thresholds, name, "fss")
        )
        if values is None:
            continue
        if by_percentile and not all(0.0 <= q <= 100.0 for q in values):
            raise ValueError(f"fss percentiles must be within 0..100, got {values}")
        for d in (member_dim, *spatial_dims):
            var = _single_chunk(var, d)
        obs = tr[name]
        for d in spatial_dims:
            obs = _single_chunk(obs, d)
        parts = xr.apply_ufunc(
            fss_components,
            obs,
            var,
            _spatial_weight(weights, spatial_dims, obs),
            input_core_dims=[list(spatial_dims), [member_dim, *spatial_dims], list(spatial_dims)],
            output_core_dims=[[levels_dim, WINDOW, COMPONENT]],
            kwargs={"thresholds": values, "windows": windows, "percentile": by_percentile},
            dask="parallelized",
            output_dtypes=[np.float64],
            dask_gufunc_kwargs={
                "output_sizes": {levels_dim: len(values), WINDOW: len(windows), COMPONENT: 3}
            },
        ).assign_coords({levels_dim: values, WINDOW: windows})
        parts = parts.mean([d for d in dims if d in parts.dims])
        diff, fc2, obs2 = (parts.isel({COMPONENT: k}) for k in range(3))
        score = 1.0 - diff / (fc2 + obs2).where(fc2 + obs2 > 0)
        out[name] = score.assign_attrs(long_name=f"fractions skill score of {name}", units="1")
    if not out:
        raise ValueError(f"fss: no forecast variable {list(fc.data_vars)} has thresholds")
    result = xr.Dataset(out)
    result[WINDOW].attrs = {"long_name": "neighbourhood size", "units": "grid points"}
    return _back(result, forecast)
