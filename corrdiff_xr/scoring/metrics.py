"""Ensemble scores for downscaled fields, lazy over Dask: CRPS, MAE, RMSE, spread, spread-skill,
rank histograms and radially averaged power spectra.

Design (after weatherbench2's ``metrics.py``): each score is computed in two steps. A
*pointwise* step scores every grid point of every chunk independently (the CRPS of the
members against the truth, the squared error of the ensemble mean, the ensemble variance...)
and an *aggregation* step takes a (optionally area-weighted) mean over the dimensions the
user names. The pointwise step is a numpy kernel (:mod:`corrdiff_xr.scoring.kernels`) lifted
with ``xr.apply_ufunc(..., dask="parallelized")``, so nothing is computed until asked and a
chunk never needs its neighbours. Non-linear scores (RMSE, spread, spread-skill) are finished
*after* the mean, e.g. ``RMSE = sqrt(mean(squared error))``, which is the only order that
aggregates correctly over chunks.

Conventions: the forecast is a Dataset (or DataArray) with a ``member`` dimension, or a
deterministic forecast without one (scored as a one-member ensemble: CRPS = MAE, no spread);
the truth has the same variable names and no ``member`` dimension (extra truth variables are
ignored). Auxiliary coordinates (2-D lat/lon) may be chunked unlike the data.
``dim`` names the dimensions to average over and defaults to every dimension except
``member``. ``weights`` is an optional DataArray (e.g. :func:`area_weights`, cos(latitude))
broadcast against the scores. Dataset in, Dataset out, one variable per forecast variable.

Limits: scores are for ensembles of scalars at each point (no multivariate scores); NaN points
are skipped by the aggregation, but a NaN member makes that point's fair CRPS, spread and
rank NaN (properscoring's CRPS instead ignores NaN members).
"""

from __future__ import annotations

import warnings
from typing import Literal

import dask.array as da
import numpy as np
import xarray as xr

from corrdiff_xr.dims import LAT, MEMBER
from corrdiff_xr.scoring import kernels
from corrdiff_xr.scoring.common import (
    Data,
    DataT,
    Dims,
    _aggregate,
    _as_ensemble,
    _back,
    _check_forecast,
    _mean_dims,
    _prepare,
    _single_chunk,
    _sqrt,
    _to_dataset,
    _with_attrs,
)
from corrdiff_xr.scoring.spectra import power_spectrum

__all__ = [
    "area_weights",
    "crps",
    "mae",
    "pointwise_crps",
    "power_spectrum",
    "rank_histogram",
    "rmse",
    "spread",
    "spread_skill",
]

Estimator = Literal["properscoring", "fair"]
RANK = "rank"


# -- pointwise (one chunk) scores ------------------------------------------------------------
def pointwise_crps(
    forecast: xr.Dataset,
    truth: xr.Dataset,
    *,
    member_dim: str = MEMBER,
    estimator: Estimator = "properscoring",
) -> xr.Dataset:
    """CRPS at every point (no averaging); see :func:`crps` for the estimators."""
    kernel = {"properscoring": kernels.crps_properscoring, "fair": kernels.crps_fair}.get(estimator)
    if kernel is None:
        raise ValueError(f"estimator must be 'properscoring' or 'fair', got {estimator!r}")
    if estimator == "properscoring" and not kernels.properscoring_uses_numba():
        warnings.warn(
            "properscoring is not using its numba gufunc (is numba importable?); its numpy "
            "fallback is O(M^2) in time and memory per point",
            RuntimeWarning,
            stacklevel=3,
        )
    out = {}
    for name, fc in forecast.data_vars.items():
        out[name] = xr.apply_ufunc(
            kernel,
            truth[name],
            _single_chunk(fc, member_dim),
            input_core_dims=[[], [member_dim]],
            dask="parallelized",
            output_dtypes=[np.float64],
        )
    return xr.Dataset(out)


def _ensemble_mean_error(forecast: xr.Dataset, truth: xr.Dataset, member_dim: str) -> xr.Dataset:
    return forecast.mean(member_dim) - truth


def _ensemble_variance(forecast: xr.Dataset, member_dim: str) -> xr.Dataset:
    sizes = forecast.sizes[member_dim]
    if sizes < 2:
        raise ValueError(f"the ensemble spread needs at least 2 members, got {sizes}")
    return forecast.var(member_dim, ddof=1)


# -- public scores ------------------------------------------------------------------------
def crps(
    forecast: DataT,
    truth: Data,
    *,
    dim: Dims = None,
    weights: xr.DataArray | None = None,
    member_dim: str = MEMBER,
    estimator: Estimator = "properscoring",
) -> DataT:
    r"""Continuous ranked probability score of an ensemble, averaged over ``dim``.

    Parameters
    ----------
    forecast : Dataset or DataArray
        Ensemble with dimension ``member_dim``; the member dimension is rechunked to a single
        chunk lazily if needed.
    truth : Dataset or DataArray
        Observations with the forecast's variable names and no member dimension.
    dim : str or sequence of str, optional
        Dimensions to average over; default all but ``member_dim``.
    weights : DataArray, optional
        Averaging weights (e.g. :func:`area_weights`).
    member_dim : str
        Name of the ensemble dimension.
    estimator : {"properscoring", "fair"}
        ``"properscoring"`` (default) is the CRPS of the empirical ensemble distribution,
        :math:`\frac{1}{M}\sum_i|x_i-y| - \frac{1}{2M^2}\sum_{i,j}|x_i-x_j|`, computed by
        ``properscoring.crps_ensemble`` (its numba gufunc). ``"fair"`` divides the pair term
        by :math:`2M(M-1)` instead, an unbiased estimate of the CRPS of the distribution the
        members are drawn from (Ferro 2014, QJRMS 140, 1917); it is lower by
        :math:`\frac{1}{2M^2(M-1)}\sum_{i,j}|x_i-x_j|`, which matters for small ensembles.

    Returns
    -------
    Dataset or DataArray
        One variable per forecast variable, the remaining dims, the forecast's units.

    References
    ----------
    Gneiting, T. and Raftery, A. E. (2007), Strictly proper scoring rules, prediction, and
    estimation. JASA 102, 359-378.
    """
    fc, tr, _ = _prepare(forecast, truth, member_dim)
    score = pointwise_crps(fc, tr, member_dim=member_dim, estimator=estimator)
    out = _aggregate(score, _mean_dims(score, dim, member_dim), weights)
    return _back(_with_attrs(out, fc, f"CRPS ({estimator})"), forecast)


def mae(
    forecast: DataT,
    truth: Data,
    *,
    dim: Dims = None,
    weights: xr.DataArray | None = None,
    member_dim: str = MEMBER,
) -> DataT:
    """Mean absolute error of the ensemble mean, ``mean(|mean_m(x) - y|)`` over ``dim``.

    Arguments as for :func:`crps`. A one-member ensemble's CRPS equals its MAE.
    """
    fc, tr, _ = _prepare(forecast, truth, member_dim)
    err = abs(_ensemble_mean_error(fc, tr, member_dim))
    out = _aggregate(err, _mean_dims(err, dim, member_dim), weights)
    return _back(_with_attrs(out, fc, "MAE of ensemble mean"), forecast)


def rmse(
    forecast: DataT,
    truth: Data,
    *,
    dim: Dims = None,
    weights: xr.DataArray | None = None,
    member_dim: str = MEMBER,
) -> DataT:
    """Root-mean-square error of the ensemble mean, ``sqrt(mean((mean_m(x) - y)^2))``.

    The square root is taken after averaging over ``dim``. Arguments as for :func:`crps`.
    """
    fc, tr, _ = _prepare(forecast, truth, member_dim)
    sq = _ensemble_mean_error(fc, tr, member_dim) ** 2
    out = _sqrt(_aggregate(sq, _mean_dims(sq, dim, member_dim), weights))
    return _back(_with_attrs(out, fc, "RMSE of ensemble mean"), forecast)


def spread(
    forecast: DataT,
    *,
    dim: Dims = None,
    weights: xr.DataArray | None = None,
    member_dim: str = MEMBER,
) -> DataT:
    """Ensemble spread ``sqrt(mean(var_m(x)))``, the unbiased (ddof=1) member variance
    averaged over ``dim`` before the square root. Needs at least two members.
    """
    fc, _ = _to_dataset(forecast, "forecast")
    fc = _as_ensemble(fc, member_dim)
    _check_forecast(fc, member_dim)
    var = _ensemble_variance(fc, member_dim)
    out = _sqrt(_aggregate(var, _mean_dims(var, dim, member_dim), weights))
    return _back(_with_attrs(out, fc, "ensemble spread"), forecast)


def spread_skill(
    forecast: DataT,
    truth: Data,
    *,
    dim: Dims = None,
    weights: xr.DataArray | None = None,
    member_dim: str = MEMBER,
) -> DataT:
    r"""Spread-skill ratio :math:`\sqrt{1 + 1/M}\,\mathrm{spread} / \mathrm{RMSE}`.

    ``spread`` and ``RMSE`` as in :func:`spread` and :func:`rmse` (same ``dim`` and
    ``weights``). For a calibrated M-member ensemble, whose truth is exchangeable with the
    members, :math:`E[(\bar x - y)^2] = (1 + 1/M)\,\sigma^2` while the ddof=1 member variance
    estimates :math:`\sigma^2`, so the corrected ratio is 1; below 1 means under-dispersed
    (Fortin et al. 2014, J. Hydrometeor. 15, 1708).
    """
    fc, tr, _ = _prepare(forecast, truth, member_dim)
    n = fc.sizes[member_dim]
    var = _ensemble_variance(fc, member_dim)
    sq = _ensemble_mean_error(fc, tr, member_dim) ** 2
    dims = _mean_dims(sq, dim, member_dim)
    ratio = np.sqrt(1.0 + 1.0 / n) * np.sqrt(
        _aggregate(var, dims, weights) / _aggregate(sq, dims, weights)
    )
    for name, v in ratio.data_vars.items():
        v.attrs = {"long_name": f"spread-skill ratio of {name}", "units": "1"}
    return _back(ratio, forecast)


def _global_index(template: xr.DataArray) -> xr.DataArray:
    """Each point's global flat index, chunked like ``template`` (keys the tie-breaking)."""
    shape = template.shape
    if template.chunks is None:
        data = kernels.block_flat_index(shape)
    else:
        data = da.map_blocks(
            lambda block_info=None: kernels.block_flat_index(shape, block_info),
            chunks=template.chunks,
            dtype=np.int64,
            meta=np.empty((0,) * len(shape), dtype=np.int64),
        )
    return xr.DataArray(data, dims=template.dims, coords=template.coords)


def rank_histogram(
    forecast: DataT,
    truth: Data,
    *,
    dim: Dims = None,
    weights: xr.DataArray | None = None,
    member_dim: str = MEMBER,
    seed: int = 0,
    normalize: bool = False,
) -> DataT:
    """Histogram of the truth's rank among the M members (Talagrand diagram), over ``dim``.

    The result has a new dimension ``rank`` (0..M): rank r counts points where exactly r
    members lie below the truth. Ties are broken randomly: a truth equal to k members takes
    one of the k + 1 tied ranks uniformly, drawn from a hash of ``seed`` and the point's
    global index, so the result is reproducible and independent of chunking. Points with a
    NaN truth or member are not counted. ``weights`` turns counts into weight sums;
    ``normalize=True`` divides by the total (a flat histogram is then 1/(M+1) everywhere).
    """
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    fc, tr, _ = _prepare(forecast, truth, member_dim)
    n = fc.sizes[member_dim]
    rank_coord = xr.DataArray(np.arange(n + 1), dims=RANK, name=RANK)
    out = {}
    for name, var in fc.data_vars.items():
        var = _single_chunk(var, member_dim)
        obs, _ = xr.broadcast(tr[name], var.isel({member_dim: 0}, drop=True))
        obs = obs.transpose(*[d for d in var.dims if d != member_dim])
        if var.chunks is not None:  # the index keys must be chunked like the members
            obs = obs.chunk({d: var.chunksizes[d] for d in obs.dims})
        ranks = xr.apply_ufunc(
            kernels.ensemble_ranks,
            obs,
            var,
            _global_index(obs),
            input_core_dims=[[], [member_dim], []],
            kwargs={"seed": seed},
            dask="parallelized",
            output_dtypes=[np.int64],
        )
        out[name] = ranks == rank_coord  # bool: (M + 1) x the chunk, so keep it one byte
    onehot = xr.Dataset(out).assign_coords({RANK: rank_coord})
    dims = _mean_dims(onehot, dim, member_dim)
    dims = [d for d in dims if d != RANK]
    if weights is None:
        hist = onehot.sum(dims).astype(np.float64)
    else:
        hist = onehot.weighted(weights.fillna(0.0)).sum(dims)
    if normalize:
        hist = hist / hist.sum(RANK)
    for name, v in hist.data_vars.items():
        v.attrs = {"long_name": f"rank histogram of {name}", "units": "1"}
    return _back(hist, forecast)


def area_weights(ds: xr.Dataset | xr.DataArray, *, lat: str = LAT) -> xr.DataArray:
    """cos(latitude) area weights from the ``lat`` coordinate (1-D or 2-D), normalised to
    mean 1; for regular lat/lon grids these are proportional to cell area."""
    if lat not in ds.coords and not (isinstance(ds, xr.Dataset) and lat in ds):
        raise ValueError(f"area_weights needs a latitude coordinate {lat!r}")
    w = np.cos(np.deg2rad(ds[lat])).clip(min=0.0)
    w = w.reset_coords(drop=True) if isinstance(w, xr.DataArray) else w
    w = w / w.mean()
    w.name = "area_weights"
    return w
