"""Scores of an ensemble's probabilities: fair Brier score, CORP reliability, ROC, twCRPS, PIT.

Events are ``value >= threshold`` for each of ``thresholds`` (a sequence for every variable, or
a mapping from variable name to its own sequence; variables left out of a mapping are not
scored), giving a ``threshold`` dimension. The forecast probability of an event is the fraction
of the M members that exceed it, so it takes the M + 1 values ``i / M``.

Where the ``scores`` library (Australian Bureau of Meteorology) has the score it does the
pointwise work, lazily on xarray objects: the fair Brier score
(``brier_score_for_ensemble``), the threshold-weighted CRPS (``tail_tw_crps_for_ensemble``)
and the CORP isotonic fit behind the reliability diagram (``isotonic_fit``). Reliability and
ROC are computed from one table of weighted case counts per (threshold, probability level,
outcome), summed over chunks: these sums are all that either needs, and they add up exactly.
The PIT histogram is written here because ``scores.probability.Pit`` computes eagerly.

Points with a NaN truth are skipped; ``weights`` (e.g. :func:`~corrdiff_xr.scoring.area_weights`)
weight every average and count, as in :mod:`~corrdiff_xr.scoring.metrics`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np
import xarray as xr

from corrdiff_xr.dims import MEMBER
from corrdiff_xr.scoring.common import (
    Data,
    DataT,
    Dims,
    _aggregate,
    _back,
    _mean_dims,
    _prepare,
    _single_chunk,
    _with_attrs,
)

__all__ = [
    "brier",
    "pit_histogram",
    "reliability",
    "roc",
    "roc_auc",
    "twcrps",
]

THRESHOLD = "threshold"
PROBABILITY = "probability"
STATISTIC = "statistic"
PIT_BIN = "pit_bin"
Thresholds = Sequence[float] | Mapping[str, Sequence[float]]
#: ``score(name, forecast variable, thresholds)``
_Score = Callable[[Hashable, xr.DataArray, list[float]], xr.DataArray]


def _thresholds(thresholds: Thresholds | None, name: Hashable, metric: str) -> list[float] | None:
    """This variable's thresholds (None: not scored); a missing setting is a clear error."""
    if thresholds is None:
        raise ValueError(
            f"{metric} needs event thresholds: pass thresholds=[...] (one list for every "
            "variable) or thresholds={'tp': [1.0, 10.0]} (CLI: --thresholds tp=1,10)"
        )
    if isinstance(thresholds, Mapping):
        if name not in thresholds:
            return None
        thresholds = thresholds[str(name)]
    values = [float(t) for t in np.atleast_1d(thresholds)]
    if not values or any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"{metric} thresholds for {name!r} must be increasing, got {values}")
    return values


def _threshold_coord(values: list[float]) -> xr.DataArray:
    return xr.DataArray(values, dims=THRESHOLD, coords={THRESHOLD: values})


def _per_variable(
    fc: xr.Dataset, thresholds: Thresholds | None, metric: str, score: _Score
) -> xr.Dataset:
    """``score(name, forecast variable, thresholds)`` for each variable that has thresholds."""
    out = {}
    for name, var in fc.data_vars.items():
        values = _thresholds(thresholds, name, metric)
        if values is not None:
            out[name] = score(name, var, values)
    if not out:
        raise ValueError(f"{metric}: no forecast variable {list(fc.data_vars)} has thresholds")
    return xr.Dataset(out)


def brier(
    forecast: DataT,
    truth: Data,
    *,
    thresholds: Thresholds | None = None,
    dim: Dims = None,
    weights: xr.DataArray | None = None,
    member_dim: str = MEMBER,
    fair: bool = True,
) -> DataT:
    r"""Brier score of the ensemble's event probabilities, ``threshold`` by ``threshold``.

    With ``i`` of ``M`` members at or above the threshold and ``y`` the observed event (0/1),
    the fair score (default; Ferro 2014) is
    :math:`(i/M - y)^2 - \frac{i (M - i)}{M^2 (M - 1)}`, an unbiased estimate of the Brier
    score of the distribution the members are drawn from; ``fair=False`` drops the
    correction. Computed pointwise by ``scores.probability.brier_score_for_ensemble``.
    Lower is better; 0 is perfect.
    """
    from scores.probability import brier_score_for_ensemble

    fc, tr, _ = _prepare(forecast, truth, member_dim)

    def score(name: Hashable, var: xr.DataArray, values: list[float]) -> xr.DataArray:
        return brier_score_for_ensemble(
            var,
            tr[name],
            member_dim,
            values,
            preserve_dims="all",
            fair_correction=fair and fc.sizes[member_dim] > 1,
            event_threshold_operator=operator.ge,
            threshold_dim=THRESHOLD,
        ).where(tr[name].notnull())

    pointwise = _per_variable(fc, thresholds, "brier", score)
    out = _aggregate(pointwise, _mean_dims(fc, dim, member_dim), weights)
    for v in out.data_vars.values():
        v.attrs = {"long_name": f"{'fair ' if fair else ''}Brier score", "units": "1"}
    return _back(out, forecast)


def event_table(
    fc: xr.Dataset,
    tr: xr.Dataset,
    *,
    thresholds: Thresholds | None,
    dims: Sequence,
    weights: xr.DataArray | None,
    member_dim: str,
    metric: str,
) -> xr.Dataset:
    """Weighted count of cases (``cases``) and of events (``events``) per (threshold,
    probability level ``i / M``): everything reliability and ROC need, summed over ``dims``."""
    m = fc.sizes[member_dim]
    w = None if weights is None else weights.fillna(0.0)

    out = {}
    for name, var in fc.data_vars.items():
        values = _thresholds(thresholds, name, metric)
        if values is None:
            continue
        thr = _threshold_coord(values)
        count = (var >= thr).sum(member_dim)
        valid = tr[name].notnull() & var.notnull().all(member_dim)
        onehot = (count == xr.DataArray(np.arange(m + 1), dims=PROBABILITY)) & valid
        event = onehot & (tr[name] >= thr)
        reduce = [d for d in dims if d in onehot.dims]
        pair = xr.concat([onehot, event], dim=STATISTIC)
        out[name] = pair.sum(reduce) if w is None else pair.weighted(w).sum(reduce)
    if not out:
        raise ValueError(f"{metric}: no forecast variable {list(fc.data_vars)} has thresholds")
    return (
        xr.Dataset(out)
        .astype(np.float64)
        .assign_coords({STATISTIC: ["cases", "events"], PROBABILITY: np.arange(m + 1) / m})
    )


def _table(
    forecast: Data,
    truth: Data,
    thresholds: Thresholds | None,
    dim: Dims,
    weights: xr.DataArray | None,
    member_dim: str,
    metric: str,
) -> xr.Dataset:
    fc, tr, _ = _prepare(forecast, truth, member_dim)
    dims = _mean_dims(fc, dim, member_dim)
    table = event_table(
        fc,
        tr,
        thresholds=thresholds,
        dims=dims,
        weights=weights,
        member_dim=member_dim,
        metric=metric,
    )
    return table


def _corp_fit(cases: np.ndarray, events: np.ndarray, probability: np.ndarray) -> np.ndarray:
    """CORP recalibrated event frequency at each probability level (axis -1): the isotonic
    (PAV) fit of the outcomes on the forecast probability, by ``scores``' ``isotonic_fit``
    on the per-level weighted means (PAV on pooled cases equals PAV on the raw ones)."""
    from scores.processing import isotonic_fit

    flat_cases = cases.reshape(-1, cases.shape[-1])
    flat_events = events.reshape(flat_cases.shape)
    fitted = np.full(flat_cases.shape, np.nan)
    for row, (n, e) in enumerate(zip(flat_cases, flat_events)):
        keep = n > 0
        if keep.sum() == 0:
            continue
        if keep.sum() == 1:
            fitted[row, keep] = e[keep] / n[keep]
            continue
        fit = isotonic_fit(
            probability[keep],
            e[keep] / n[keep],
            weight=n[keep],
            functional=None,  # sklearn's PAV is optional in scores; its own takes a solver
            solver=lambda y, w: np.average(y, weights=w),
        )
        fitted[row, keep] = fit["regression_values"]
    return fitted.reshape(cases.shape)


def reliability(
    forecast: DataT,
    truth: Data,
    *,
    thresholds: Thresholds | None = None,
    dim: Dims = None,
    weights: xr.DataArray | None = None,
    member_dim: str = MEMBER,
) -> DataT:
    """Reliability diagram of the event probabilities, by the CORP method.

    Dims ``(threshold, probability, statistic)`` plus any not reduced: at each forecast
    probability ``i / M``, ``statistic="corp"`` is the CORP recalibrated event frequency
    (the isotonic regression of outcomes on probabilities, Dimitriadis, Gneiting and Jordan
    2021, PNAS 118, e2016191118), ``"observed"`` the plain event frequency of those cases
    and ``"fraction"`` their share of all cases (the sharpness histogram). A reliable
    forecast has ``corp`` on the diagonal. NaN where no case has that probability.
    """
    table = _table(forecast, truth, thresholds, dim, weights, member_dim, "reliability")
    out = {}
    for name, t in table.data_vars.items():
        cases = t.sel({STATISTIC: "cases"}, drop=True)
        events = t.sel({STATISTIC: "events"}, drop=True)
        corp = xr.apply_ufunc(
            _corp_fit,
            cases,
            events,
            input_core_dims=[[PROBABILITY], [PROBABILITY]],
            output_core_dims=[[PROBABILITY]],
            kwargs={"probability": table[PROBABILITY].values},
            dask="parallelized",
            output_dtypes=[np.float64],
        )
        observed = events / cases.where(cases > 0)
        fraction = cases / cases.sum(PROBABILITY)
        stats = [corp, observed, fraction]
        out[name] = xr.concat(stats, dim=STATISTIC, coords="minimal").transpose(..., STATISTIC)
        out[name].attrs = {"long_name": f"reliability of {name} events", "units": "1"}
    result = xr.Dataset(out).assign_coords({STATISTIC: ["corp", "observed", "fraction"]})
    return _back(result, forecast)


def _roc_curve(table: xr.Dataset) -> xr.Dataset:
    """Hit rate (POD) and false-alarm rate (POFD) of 'probability >= i / M', i = 0..M + 1."""
    cases = table.sel({STATISTIC: "cases"}, drop=True)
    events = table.sel({STATISTIC: "events"}, drop=True)
    # reverse cumulative sums over probability: cases at or above each level
    above_events = events.isel({PROBABILITY: slice(None, None, -1)}).cumsum(PROBABILITY)
    above_events = above_events.isel({PROBABILITY: slice(None, None, -1)})
    above_cases = cases.isel({PROBABILITY: slice(None, None, -1)}).cumsum(PROBABILITY)
    above_cases = above_cases.isel({PROBABILITY: slice(None, None, -1)})
    total_events = events.sum(PROBABILITY)
    total_non = cases.sum(PROBABILITY) - total_events
    pod = above_events / total_events.where(total_events > 0)
    pofd = (above_cases - above_events) / total_non.where(total_non > 0)
    return xr.concat([pod, pofd], dim=STATISTIC).assign_coords({STATISTIC: ["pod", "pofd"]})


def roc(
    forecast: DataT,
    truth: Data,
    *,
    thresholds: Thresholds | None = None,
    dim: Dims = None,
    weights: xr.DataArray | None = None,
    member_dim: str = MEMBER,
) -> DataT:
    """ROC curve of the event probabilities: dims ``(threshold, probability, statistic)``,
    ``statistic`` = ``pod`` (hit rate) and ``pofd`` (false-alarm rate) of the decision
    "forecast probability >= ``probability``", for ``probability`` = 0, 1/M, ..., 1."""
    table = _table(forecast, truth, thresholds, dim, weights, member_dim, "roc")
    out = _roc_curve(table).transpose(..., STATISTIC)
    for name, v in out.data_vars.items():
        v.attrs = {"long_name": f"ROC curve of {name} events", "units": "1"}
    return _back(out, forecast)


def roc_auc(
    forecast: DataT,
    truth: Data,
    *,
    thresholds: Thresholds | None = None,
    dim: Dims = None,
    weights: xr.DataArray | None = None,
    member_dim: str = MEMBER,
) -> DataT:
    """Area under the ROC curve (trapezoidal, through (0, 0) and (1, 1)), per threshold.

    Equals the probability that a random event got a higher forecast probability than a
    random non-event, ties counted half (the Mann-Whitney statistic, as
    ``scores.probability.roc_auc``). 1 is perfect discrimination, 0.5 none.
    """
    table = _table(forecast, truth, thresholds, dim, weights, member_dim, "roc_auc")
    curve = _roc_curve(table)
    pod, pofd = curve.sel({STATISTIC: "pod"}, drop=True), curve.sel({STATISTIC: "pofd"}, drop=True)
    # points run from (1, 1) at probability 0 down to the last level; close at (0, 0)
    step = pofd - pofd.shift({PROBABILITY: -1}, fill_value=0.0)
    height = 0.5 * (pod + pod.shift({PROBABILITY: -1}, fill_value=0.0))
    auc = (step * height).sum(PROBABILITY, min_count=1)
    auc = auc.where(pod.notnull().all(PROBABILITY) & pofd.notnull().all(PROBABILITY))
    for name, v in auc.data_vars.items():
        v.attrs = {"long_name": f"ROC area of {name} events", "units": "1"}
    return _back(auc, forecast)


def twcrps(
    forecast: DataT,
    truth: Data,
    *,
    thresholds: Thresholds | None = None,
    dim: Dims = None,
    weights: xr.DataArray | None = None,
    member_dim: str = MEMBER,
    estimator: str = "properscoring",
    tail: str = "upper",
) -> DataT:
    r"""Threshold-weighted CRPS, weight :math:`w(z) = 1\{z \ge t\}` (``tail="upper"``) or
    :math:`1\{z \le t\}` (``"lower"``), for each threshold ``t``.

    The CRPS of the forecast and truth passed through the chaining function
    :math:`v(z) = \max(z, t)` (Allen, Ginsbourger and Ziegel 2023, SIAM/ASA JUQ 11, 906),
    so only errors in the tail count; ``t = -inf`` gives the CRPS. Computed pointwise by
    ``scores.probability.tail_tw_crps_for_ensemble``; ``estimator`` as for
    :func:`~corrdiff_xr.scoring.crps` (``"properscoring"`` is scores' ``"ecdf"``).
    """
    from scores.probability import tail_tw_crps_for_ensemble

    method = {"properscoring": "ecdf", "fair": "fair"}.get(estimator)
    if method is None:
        raise ValueError(f"estimator must be 'properscoring' or 'fair', got {estimator!r}")
    if tail not in ("upper", "lower"):
        raise ValueError(f"tail must be 'upper' or 'lower', got {tail!r}")
    fc, tr, _ = _prepare(forecast, truth, member_dim)

    def score(name: Hashable, var: xr.DataArray, values: list[float]) -> xr.DataArray:
        var = _single_chunk(var, member_dim)
        per = [
            tail_tw_crps_for_ensemble(
                var, tr[name], member_dim, t, tail=tail, method=method, preserve_dims="all"
            )
            for t in values
        ]
        return xr.concat(per, dim=_threshold_coord(values))

    pointwise = _per_variable(fc, thresholds, "twcrps", score)
    out = _aggregate(pointwise, _mean_dims(fc, dim, member_dim), weights)
    return _back(_with_attrs(out, fc, f"{tail}-tail twCRPS ({estimator})"), forecast)


def _pit_masses(observation: np.ndarray, forecasts: np.ndarray, *, bins: int) -> np.ndarray:
    """Each case's PIT, uniform on [#(x < y) / M, #(x <= y) / M], spread over ``bins`` equal
    bins closed on the right (the first also holds 0); NaN where anything is NaN."""
    obs = np.asarray(observation, dtype=np.float64)[..., None]
    fc = np.asarray(forecasts, dtype=np.float64)
    m = fc.shape[-1]
    lo = (np.sum(fc < obs, axis=-1) / m)[..., None]
    hi = (np.sum(fc <= obs, axis=-1) / m)[..., None]
    edges = np.linspace(0.0, 1.0, bins + 1)
    left, right = edges[:-1], edges[1:]
    width = hi - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = np.clip(np.minimum(right, hi) - np.maximum(left, lo), 0.0, None) / width
    # a point mass (no spread) goes to the bin (left, right], or the first bin at 0
    point = ((lo > left) | (left == 0.0)) & (lo <= right)
    point &= ~(point.cumsum(axis=-1) > 1)  # an edge value counts once, in the lower bin
    mass = np.where(width > 0, spread, point.astype(np.float64))
    invalid = np.isnan(obs[..., 0]) | np.isnan(fc).any(axis=-1)
    mass[invalid] = np.nan
    return mass


def pit_histogram(
    forecast: DataT,
    truth: Data,
    *,
    bins: int = 10,
    dim: Dims = None,
    weights: xr.DataArray | None = None,
    member_dim: str = MEMBER,
) -> DataT:
    """Histogram of the probability integral transform, dims (``pit_bin``, ...).

    For an M-member ensemble the PIT of truth ``y`` is uniform on
    ``[#(x < y) / M, #(x <= y) / M]`` (a point at ``k / M`` without ties; Gneiting and
    Ranjan 2013, as ``scores.probability.Pit``); the histogram is the mean of these
    distributions over ``dim``, exactly, in ``bins`` equal bins closed on the right. It sums
    to 1; a U shape is under-dispersed. For a calibrated ensemble without ties the PIT is
    ``k / M`` with probability ``1 / (M + 1)`` for each k = 0..M, so with ``bins = M`` the
    first bin (holding 0 and 1/M) is twice the others; :func:`rank_histogram` is the view
    that is flat. Computed here, lazily, as scores' version computes eagerly.
    """
    if int(bins) < 1:
        raise ValueError(f"bins must be a positive integer, got {bins}")
    fc, tr, _ = _prepare(forecast, truth, member_dim)
    centres = (np.arange(bins) + 0.5) / bins
    out = {}
    for name, var in fc.data_vars.items():
        out[name] = xr.apply_ufunc(
            _pit_masses,
            tr[name],
            _single_chunk(var, member_dim),
            input_core_dims=[[], [member_dim]],
            output_core_dims=[[PIT_BIN]],
            kwargs={"bins": int(bins)},
            dask="parallelized",
            output_dtypes=[np.float64],
            dask_gufunc_kwargs={"output_sizes": {PIT_BIN: int(bins)}},
        )
    masses = xr.Dataset(out).assign_coords({PIT_BIN: centres})
    hist = _aggregate(masses, _mean_dims(fc, dim, member_dim), weights)
    for name, v in hist.data_vars.items():
        v.attrs = {"long_name": f"PIT histogram of {name}", "units": "1"}
    return _back(hist, forecast)
