"""Opening forecasts to score: our Zarr ensembles and the reference's NetCDF layout.

Two layouts are understood:

* **ours** (Zarr, any fsspec URL): a flat Dataset whose prediction variables have a ``member``
  dimension. The truth comes from a separate source or, without one, from the same store: its
  group ``truth`` (default), or its root under the target names when the ensemble sits in
  another group. A separate truth is a store or NetCDF file with the prediction's variable
  names, or a canonical dataset (``catalog:NAME/ENTRY`` or a canonical Zarr store, opened by
  :func:`corrdiff_xr.data.open_source`), whose targets are the truth.
* **the reference's NetCDF** (PhysicsNeMo ``generate.py``): root ``lat``/``lon`` (y, x) and
  ``time``, groups ``input``, ``truth`` and ``prediction``; the prediction's ensemble
  dimension is called ``ensemble`` there and is renamed to ``member``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import xarray as xr

from corrdiff_xr._redact import redact_url
from corrdiff_xr.data.write import is_netcdf
from corrdiff_xr.dims import COARSE_DIMS, LAT, LON, MEMBER, TIME, X, Y
from corrdiff_xr.errors import CorrDiffError, InputNotFoundError

__all__ = [
    "REFERENCE_MEMBER_DIM",
    "FORECAST",
    "ScoreError",
    "check_unique_times",
    "format_table",
    "open_forecast",
    "open_prediction",
    "open_reference_netcdf",
    "open_truth",
]

#: the dim of a score table that holds several forecasts (the prediction and its baselines)
FORECAST = "forecast"
#: the reference's name of the ensemble dimension
REFERENCE_MEMBER_DIM = "ensemble"


class ScoreError(CorrDiffError, ValueError):
    """The inputs cannot be scored as given (not found, wrong layout, mismatched, ...)."""


def _exists(path: str, role: str) -> None:
    if "://" not in path and not os.path.exists(path):
        raise InputNotFoundError(f"{role} {path} does not exist")


def open_reference_netcdf(path: str | os.PathLike) -> dict[str, xr.Dataset]:
    """Open the reference's output NetCDF as lazy Datasets ``prediction``, ``truth``, ``input``.

    Root ``time`` (decoded) and ``lat``/``lon`` become coordinates of every group, and the
    prediction's ``ensemble`` dimension is renamed ``member``. Missing groups are omitted.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputNotFoundError(f"reference NetCDF {path!r} does not exist")
    try:
        root = xr.open_dataset(path, engine="netcdf4", chunks={})
    except (OSError, ValueError) as err:
        raise ScoreError(
            f"{path} is not a readable NetCDF file ({err}); the reference layout is NetCDF-4, "
            "pass --format zarr for a Zarr store"
        ) from err
    for name in (LAT, LON):
        if name not in root.variables:
            raise ScoreError(f"{path}: the reference layout needs a root variable {name!r}")
    coords = {LAT: root[LAT].load(), LON: root[LON].load()}
    if TIME in root.variables:
        coords[TIME] = root[TIME].load()
    groups = {}
    for group in ("prediction", "truth", "input"):
        try:
            ds = xr.open_dataset(path, engine="netcdf4", group=group, chunks={})
        except OSError:  # netCDF4 raises OSError for a missing group
            continue
        ds = ds.assign_coords({k: v for k, v in coords.items() if set(v.dims) <= set(ds.dims)})
        if REFERENCE_MEMBER_DIM in ds.dims:
            ds = ds.rename({REFERENCE_MEMBER_DIM: MEMBER})
        groups[group] = ds
    if "prediction" not in groups:
        raise ScoreError(f"{path}: no 'prediction' group; is this a reference output NetCDF?")
    return groups


def _open_any(
    path: str, *, group: str | None, storage_options: dict[str, Any], role: str
) -> xr.Dataset:
    """Open a Zarr store (local or fsspec URL) or NetCDF file, naming ``role`` if that fails."""
    _exists(path, role)
    netcdf = is_netcdf(path)
    try:
        if netcdf:
            return xr.open_dataset(path, group=group, chunks={})
        # fsspec options only apply to URLs; a local truth beside a remote ensemble is fine
        options = (storage_options or None) if "://" in path else None
        return xr.open_zarr(path, group=group, storage_options=options)
    except (OSError, KeyError, ValueError) as err:
        what = "NetCDF file" if netcdf else "Zarr store"
        where = f" with a group {group!r}" if group else ""
        raise ScoreError(f"{role} {path}: cannot open it as a {what}{where} ({err})") from err


def open_truth(
    truth: str,
    *,
    params: dict[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> xr.Dataset:
    """The truth named by ``--truth``, lazily.

    A ``catalog:NAME/ENTRY`` (with the entry's user parameters ``params``) or a Zarr store in
    the canonical layout (it has a coarse grid) is opened and validated by
    :func:`corrdiff_xr.data.open_source`, and its targets are the truth; any other Zarr store
    or NetCDF file is the truth as it is (its variables named like the prediction's).
    """
    return _truth_and_inputs(truth, params=params, storage_options=storage_options)[0]


def _truth_and_inputs(
    truth: str, *, params: dict[str, Any] | None, storage_options: dict[str, Any] | None
) -> tuple[xr.Dataset, xr.Dataset | None]:
    """:func:`open_truth`, and the inputs regridded to the fine grid when the truth is a
    canonical dataset (None otherwise): what the bilinear baseline is made of."""
    from corrdiff_xr.data import catalog_spec, open_source

    what, params_what = "--truth", "--truth-param"
    if catalog_spec(truth, what=what) is not None:
        pair = open_source(truth, params=params, what=what, params_what=params_what)
        return pair.fine, pair.inputs_on_fine
    if params:
        raise ScoreError(
            f"--truth-param {sorted(params)} only apply to a catalog:NAME/ENTRY --truth, not to "
            f"{redact_url(truth)}; remove --truth-param"
        )
    ds = _open_any(truth, group=None, storage_options=storage_options or {}, role="--truth")
    if is_netcdf(truth) or not set(COARSE_DIMS) <= set(ds.dims):
        return ds, None
    # fsspec options only apply to URLs, as for the prediction
    options = storage_options if "://" in truth else None
    pair = open_source(truth, storage_options=options, what=what, params_what=params_what)
    return pair.fine, pair.inputs_on_fine


def open_prediction(
    prediction: str,
    *,
    truth: str | None = None,
    truth_group: str | None = None,
    prediction_group: str | None = None,
    layout: str = "auto",
    storage_options: dict[str, Any] | None = None,
    truth_params: dict[str, Any] | None = None,
) -> tuple[xr.Dataset, xr.Dataset, xr.Dataset | None]:
    """Open (prediction, truth, inputs-or-None) lazily from either supported layout.

    ``truth`` is opened by :func:`open_truth` (``truth_params``: a catalog entry's user
    parameters). For a Zarr prediction store without ``truth``, the truth is read from the
    same store: group ``truth_group`` (default ``"truth"``), or, when the ensemble sits in
    ``prediction_group``, the store's root (a canonical store with the target names).

    Raises
    ------
    InputNotFoundError
        A local input does not exist.
    ScoreError
        An input cannot be opened, or holds no ensemble / truth.
    """
    storage_options = storage_options or {}
    if layout == "reference-netcdf" or (layout == "auto" and is_netcdf(prediction)):
        groups = open_reference_netcdf(prediction)
        if truth is not None:
            truth_ds = open_truth(truth, params=truth_params, storage_options=storage_options)
        elif "truth" in groups:
            truth_ds = groups["truth"]
        else:
            raise ScoreError(f"{prediction}: no 'truth' group and no --truth given")
        check_unique_times(groups["prediction"], f"prediction {prediction}")
        check_unique_times(truth_ds, f"--truth {truth}" if truth else f"truth of {prediction}")
        return groups["prediction"], truth_ds, groups.get("input")
    pred = _open_any(
        prediction, group=prediction_group, storage_options=storage_options, role="prediction"
    )
    pred = _forecast_variables(pred, prediction)
    check_unique_times(pred, f"prediction {prediction}")
    inputs = None
    if truth is not None:
        truth_ds, inputs = _truth_and_inputs(
            truth, params=truth_params, storage_options=storage_options
        )
    else:
        if truth_group is None and prediction_group is None:
            truth_group = "truth"
        try:
            truth_ds = _open_any(
                prediction, group=truth_group, storage_options=storage_options, role="prediction"
            )
        except ScoreError as err:
            raise ScoreError(
                f"{prediction}: no truth group {truth_group!r}; pass --truth PATH"
            ) from err
    check_unique_times(truth_ds, f"--truth {truth}" if truth else f"truth of {prediction}")
    return pred, truth_ds, inputs


def open_forecast(
    prediction: str,
    *,
    prediction_group: str | None = None,
    layout: str = "auto",
    storage_options: dict[str, Any] | None = None,
) -> xr.Dataset:
    """Only the forecast of ``prediction`` (either layout), lazily: a second forecast to
    score on another one's truth."""
    if layout == "reference-netcdf" or (layout == "auto" and is_netcdf(prediction)):
        pred = open_reference_netcdf(prediction).get("prediction")
        if pred is None:
            raise ScoreError(f"{prediction}: the reference NetCDF has no 'prediction' group")
    else:
        pred = _open_any(
            prediction,
            group=prediction_group,
            storage_options=storage_options or {},
            role="prediction",
        )
        pred = _forecast_variables(pred, prediction)
    check_unique_times(pred, f"prediction {prediction}")
    return pred


def check_unique_times(ds: xr.Dataset, where: str) -> None:
    """Refuse a forecast or truth whose ``time`` labels repeat: scores would pair the wrong
    steps (a sub-hourly file written with whole hours gives several steps one label)."""
    if TIME not in ds.coords:
        return
    labels, counts = np.unique(ds[TIME].values, return_counts=True)
    repeated = labels[counts > 1]
    if repeated.size:
        raise ScoreError(
            f"{redact_url(where)}: time label(s) {[str(t) for t in repeated[:3]]} repeat "
            f"({int(counts[counts > 1].sum())} of {ds.sizes[TIME]} steps share "
            f"{repeated.size} label(s)); each step needs its own time: rewrite the file with "
            "its full times"
        )


def _forecast_variables(pred: xr.Dataset, prediction: str) -> xr.Dataset:
    """The ensemble's variables (those with a member dim), or else a deterministic forecast's
    (every variable on the fine grid, e.g. ``generate --output-kind mean``)."""
    ensemble = [n for n, v in pred.data_vars.items() if MEMBER in v.dims]
    if ensemble:
        return pred[ensemble]
    fine = [
        n
        for n, v in pred.data_vars.items()
        if {Y, X} <= set(v.dims) and not set(COARSE_DIMS) & set(v.dims)
    ]
    if not fine:
        raise ScoreError(
            f"{prediction}: no variable has a {MEMBER!r} dimension or the fine grid's (y, x) "
            f"dims (its variables: {sorted(map(str, pred.data_vars))}; a reference NetCDF "
            "needs --format reference-netcdf)"
        )
    return pred[fine]


def format_table(scores: xr.Dataset) -> str:
    """Time-mean scores as a small text table: one row per metric, one column per variable;
    with bootstrap intervals (``interval``, ``difference_interval``) a block of each."""
    if FORECAST in scores["score"].dims:  # one block per forecast: the prediction, then others
        return "\n\n".join(
            f"{f}\n" + format_table(scores.sel({FORECAST: f})) for f in scores[FORECAST].values
        )
    table = scores["score"]
    if TIME in table.dims:
        table = table.mean(TIME)
    lines = _table_lines(table)
    level = f"{100 * scores.attrs.get('confidence', 0):g} %"
    reference = scores.attrs.get("difference_reference", "the first forecast")
    titles = (
        ("interval", "interval"),
        ("difference_interval", f"interval of the difference with {reference}"),
    )
    for name, title in titles:
        if name in scores and not (name == "difference_interval" and _is_reference(scores)):
            bounds = scores[name]
            lines += [f"{level} {title} (block bootstrap over time)"]
            lines += _table_lines(bounds.sel(bound="lower"), upper=bounds.sel(bound="upper"))
    return "\n".join(lines)


def _is_reference(scores: xr.Dataset) -> bool:
    """The first forecast's difference with itself, not worth a block of zeros."""
    return bool((scores["difference_interval"] == 0).all())


def _table_lines(table: xr.DataArray, *, upper: xr.DataArray | None = None) -> list[str]:
    """Rows of ``table`` (metric by variable), or of ``[table, upper]`` intervals."""
    variables = [str(v) for v in table["variable"].values]
    units = (
        [str(u) for u in table["units"].values]
        if "units" in table.coords
        else [""] * len(variables)
    )
    heads = [f"{v} [{u}]" if u else v for v, u in zip(variables, units)]
    width = max(12 if upper is None else 22, *(len(h) + 2 for h in heads))
    label = max(14, *(len(str(m)) + 2 for m in table["metric"].values))
    lines = ["metric".ljust(label) + "".join(h.rjust(width) for h in heads)]
    for metric in table["metric"].values:
        row = table.sel(metric=metric).values
        if upper is None:
            texts = [f"{x:.4g}" for x in row]
        else:
            high = upper.sel(metric=metric).values
            texts = [f"[{lo:.4g}, {hi:.4g}]" for lo, hi in zip(row, high)]
        lines.append(str(metric).ljust(label) + "".join(t.rjust(width) for t in texts))
    return lines
