"""The one table of metrics, read by :func:`summary`, ``corrdiff-xr score`` and ``ds.corrdiff``.

Each :class:`Metric` names a score function and says what it needs (truth, two or more
members), which way is better and how it aggregates over chunks. Every function takes
``(forecast, truth, *, dim, weights, member_dim, **options)`` (truth left out when it needs
none); a new metric is one function and one row here.

:func:`summary` turns any of them into one tidy table, variable ``score`` with dims
(metric, variable, time): dims a metric adds (threshold, window, rank, probability, ...) are
folded into the metric label, e.g. ``fss[percentile=90,window=3]``, so histograms and curves
sit in the same table as scalar scores.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import xarray as xr

from corrdiff_xr.dims import MEMBER, TIME, X, Y
from corrdiff_xr.scoring import metrics as _m
from corrdiff_xr.scoring import multivariate as _mv
from corrdiff_xr.scoring import neighbourhood as _fss
from corrdiff_xr.scoring import probabilistic as _p
from corrdiff_xr.scoring import spectra as _s
from corrdiff_xr.scoring.common import Data, DataT, Dims, _mean_dims, _prepare, _to_dataset

__all__ = ["METRIC_TABLE", "METRICS", "Metric", "summary"]

#: aggregations, i.e. how a metric combines chunks (all exact, whatever the chunking)
AGGREGATIONS = {
    "mean": "pointwise score, (weighted) mean over dim",
    "root_mean": "square root of the (weighted) mean of a pointwise square",
    "ratio_of_means": "ratio of two (weighted) means",
    "components": "(weighted) means of window components, the score formed after",
    "histogram": "(weighted) counts or mean masses per bin",
    "table": "(weighted) case and event counts per threshold and probability, curves after",
    "spectrum": "power spectra averaged over dim, compared after",
}


@dataclass(frozen=True)
class Metric:
    """One row of the metric table.

    Attributes
    ----------
    name : str
        Key in :data:`METRIC_TABLE`, in ``summary(metrics=...)`` and ``score --metrics``.
    function : callable
        ``function(forecast, [truth,] *, dim, weights, member_dim, **options)``.
    needs_truth : bool
        False for properties of the forecast alone (spread, spectra).
    needs_members : bool
        True when it needs at least two members (left out of a one-member summary).
    higher_is_better : bool or None
        None for diagnostics read by shape (histograms, curves, spectra, spread).
    aggregation : str
        One of :data:`AGGREGATIONS`.
    options : tuple of str
        Keyword options it takes beyond the common ones (thresholds, windows, ...).
    """

    name: str
    function: Callable[..., Data]
    needs_truth: bool
    needs_members: bool
    higher_is_better: bool | None
    aggregation: str
    options: tuple[str, ...] = field(default=())

    def __call__(self, forecast: Data, truth: Data | None = None, **kwargs: Any) -> Data:
        """Score ``forecast`` (against ``truth`` when it needs one)."""
        unknown = set(kwargs) - {"dim", "weights", "member_dim", *self.options}
        if unknown:
            raise TypeError(
                f"metric {self.name!r} takes no option(s) {sorted(unknown)}; "
                f"its options are {list(self.options)}"
            )
        if not self.needs_truth:
            return self.function(forecast, **kwargs)
        if truth is None:
            raise ValueError(f"metric {self.name!r} needs the truth")
        return self.function(forecast, truth, **kwargs)


def _spread(forecast: DataT, **kw: Any) -> DataT:
    return _m.spread(forecast, **kw)


def _not_spatial(dim: Dims, spatial_dims: tuple[str, str]) -> Dims:
    """``dim`` less the spatial dims, which a spectrum always consumes."""
    if dim is None:
        return None
    dims = list(dim) if isinstance(dim, Sequence) and not isinstance(dim, str) else [dim]
    return [d for d in dims if d not in spatial_dims]


def _power_spectrum(
    forecast: DataT,
    *,
    dim: Dims = None,
    weights: xr.DataArray | None = None,
    member_dim: str = MEMBER,
    spatial_dims: tuple[str, str] = (Y, X),
    **kw: Any,
) -> DataT:
    """The members' mean power spectrum (``power_spectrum`` keeps one per member)."""
    del weights  # a spectrum is a sum over the whole grid: area weights do not apply
    spec = _s.power_spectrum(
        forecast,
        dim=_not_spatial(dim, spatial_dims),
        member_dim=member_dim,
        spatial_dims=spatial_dims,
        **kw,
    )
    return spec.mean(member_dim, keep_attrs=True) if member_dim in spec.dims else spec


def _lsd(
    forecast: DataT,
    truth: Data,
    *,
    dim: Dims = None,
    weights: xr.DataArray | None = None,
    member_dim: str = MEMBER,
    spatial_dims: tuple[str, str] = (Y, X),
    **kw: Any,
) -> DataT:
    del weights  # as for the spectra
    return _s.log_spectral_distance(
        forecast,
        truth,
        dim=_not_spatial(dim, spatial_dims),
        member_dim=member_dim,
        spatial_dims=spatial_dims,
        **kw,
    )


_THR = ("thresholds",)
_SPECTRAL = ("spacing", "spatial_dims")


class _Needs(TypedDict):
    needs_truth: bool
    needs_members: bool


_SCORE: _Needs = {"needs_truth": True, "needs_members": False}  # most rows: truth, any ensemble
_ROWS = [
    Metric("crps", _m.crps, **_SCORE, higher_is_better=False, aggregation="mean",
           options=("estimator",)),
    Metric("mae", _m.mae, **_SCORE, higher_is_better=False, aggregation="mean"),
    Metric("rmse", _m.rmse, **_SCORE, higher_is_better=False, aggregation="root_mean"),
    Metric("spread", _spread, needs_truth=False, needs_members=True, higher_is_better=None,
           aggregation="root_mean"),
    Metric("spread_skill", _m.spread_skill, needs_truth=True, needs_members=True,
           higher_is_better=None, aggregation="ratio_of_means"),
    Metric("rank_histogram", _m.rank_histogram, **_SCORE, higher_is_better=None,
           aggregation="histogram", options=("seed", "normalize")),
    Metric("power_spectrum", _power_spectrum, needs_truth=False, needs_members=False,
           higher_is_better=None, aggregation="spectrum", options=_SPECTRAL),
    Metric("fss", _fss.fss, **_SCORE, higher_is_better=True, aggregation="components",
           options=("windows", *_THR, "percentiles", "spatial_dims")),
    Metric("brier", _p.brier, **_SCORE, higher_is_better=False, aggregation="mean",
           options=(*_THR, "fair")),
    Metric("reliability", _p.reliability, **_SCORE, higher_is_better=None,
           aggregation="table", options=_THR),
    Metric("roc", _p.roc, **_SCORE, higher_is_better=None, aggregation="table", options=_THR),
    Metric("roc_auc", _p.roc_auc, **_SCORE, higher_is_better=True, aggregation="table",
           options=_THR),
    Metric("twcrps", _p.twcrps, **_SCORE, higher_is_better=False, aggregation="mean",
           options=(*_THR, "estimator", "tail")),
    Metric("pit_histogram", _p.pit_histogram, **_SCORE, higher_is_better=None,
           aggregation="histogram", options=("bins",)),
    Metric("energy_score", _mv.energy_score, **_SCORE, higher_is_better=False,
           aggregation="mean", options=("variables", "scale", "estimator")),
    Metric("variogram_score", _mv.variogram_score, **_SCORE, higher_is_better=False,
           aggregation="mean", options=("p", "max_lag", "spatial_dims")),
    Metric("log_spectral_distance", _lsd, **_SCORE, higher_is_better=False,
           aggregation="spectrum", options=_SPECTRAL),
]  # fmt: skip
#: every metric by name, in table order
METRIC_TABLE: dict[str, Metric] = {m.name: m for m in _ROWS}
#: the metrics :func:`summary` and ``corrdiff-xr score`` compute by default
METRICS = ("crps", "mae", "rmse", "spread", "spread_skill")


def _label(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _as_rows(name: str, result: Data, kept: Sequence[Hashable]) -> xr.DataArray:
    """A metric's result as (metric, variable, *kept), extra dims folded into the label."""
    ds = result if isinstance(result, xr.Dataset) else result.to_dataset()
    ds = ds.drop_vars([c for c in ds.coords if c not in ds.dims])
    da = ds.to_dataarray("variable")
    extra = [d for d in da.dims if d not in ("variable", *kept)]
    if not extra:
        return da.expand_dims(metric=[name])
    stacked = da.stack(_row=extra)
    labels = [
        f"{name}[{','.join(f'{d}={_label(v)}' for d, v in zip(extra, key))}]"
        for key in stacked.indexes["_row"]
    ]
    stacked = stacked.drop_vars(["_row", *extra]).assign_coords(_row=labels)
    return stacked.rename(_row="metric").transpose("metric", "variable", ...)


def summary(
    forecast: xr.Dataset | xr.DataArray,
    truth: xr.Dataset | xr.DataArray,
    *,
    metrics: Sequence[str] = METRICS,
    dim: Dims = None,
    weights: xr.DataArray | None = None,
    member_dim: str = MEMBER,
    estimator: str = "properscoring",
    options: Mapping[str, Mapping[str, Any]] | None = None,
    regions: xr.DataArray | Mapping[str, xr.DataArray] | None = None,
) -> xr.Dataset:
    """A tidy table of scores: variable ``score`` with dims (metric, variable, ...).

    ``metrics`` are names in :data:`METRIC_TABLE`; ``options`` maps a metric's name to its
    keyword options (e.g. ``{"fss": {"windows": [1, 5]}, "brier": {"thresholds": [1.0]}}``)
    and ``estimator`` goes to every metric that takes one. ``dim`` defaults to every dim
    except ``member_dim`` and ``time``, so the table keeps one row per valid time. Metrics
    needing two members are left out for a one-member ensemble. ``regions`` (masks from
    :func:`~corrdiff_xr.scoring.regions.region_masks`) add a ``region`` dim, each region
    scored as its own domain (:func:`~corrdiff_xr.scoring.regions.by_region`). The result
    is lazy.
    """
    if regions is not None:
        from corrdiff_xr.scoring.regions import by_region

        # a region cuts Datasets: DataArrays are scored as one-variable Datasets
        fc_ds, tr_ds = _to_dataset(forecast, "forecast")[0], _to_dataset(truth, "truth")[0]
        return by_region(
            summary, fc_ds, tr_ds, regions, weights=weights, options=options, metrics=metrics,
            dim=dim, member_dim=member_dim, estimator=estimator,
        )  # fmt: skip
    fc, tr, _ = _prepare(forecast, truth, member_dim)
    if dim is None:
        dim = [d for d in fc.dims if d not in (member_dim, TIME)]
    kept = [d for d in fc.dims if d != member_dim and d not in _mean_dims(fc, dim, member_dim)]
    unknown = [m for m in [*metrics, *(options or {})] if m not in METRIC_TABLE]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRIC_TABLE)}")
    if fc.sizes[member_dim] < 2:
        metrics = [m for m in metrics if not METRIC_TABLE[m].needs_members]
    rows = []
    for name in metrics:
        metric = METRIC_TABLE[name]
        kw = dict((options or {}).get(name, {}))
        if "estimator" in metric.options:
            kw.setdefault("estimator", estimator)
        result = metric(fc, tr, dim=dim, weights=weights, member_dim=member_dim, **kw)
        rows.append(_as_rows(name, result, kept))
    table = xr.concat(rows, dim="metric", coords="minimal", compat="override", join="outer")
    units = [
        str(fc[v].attrs.get("units", "")) if v in fc.data_vars else ""
        for v in table["variable"].values
    ]
    table = table.assign_coords(units=("variable", units))
    return (
        table.rename("score")
        .to_dataset()
        .assign_attrs(crps_estimator=estimator, member_count=int(fc.sizes[member_dim]))
    )
