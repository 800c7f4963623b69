"""``corrdiff-xr score``: score an ensemble against truth and write a tidy table of scores.

Two input layouts are understood:

* **ours** (Zarr, any fsspec URL): a flat Dataset whose prediction variables have a ``member``
  dimension. The truth comes from ``--truth`` (a Zarr store or NetCDF file in the canonical
  layout; variables with the prediction's names are used) or, without ``--truth``, from the
  same store: its group ``--truth-group`` (default ``truth``), or its root under the target
  names when the ensemble sits in ``--prediction-group``.
* **the reference's NetCDF** (PhysicsNeMo ``generate.py``): root ``lat``/``lon`` (y, x) and
  ``time``, groups ``input``, ``truth`` and ``prediction``; the prediction's ensemble
  dimension is called ``ensemble`` there and is renamed to ``member``.

The result is a Dataset with variable ``score`` of dims (metric, variable, time), written to
``--output`` (``.nc`` -> NetCDF, otherwise Zarr; atomically: written beside the target and
renamed into place), plus a short table of time-mean scores on stdout. Dask's threaded
scheduler computes everything; no process pool is started (the reference's scorer hangs with
one, PhysicsNeMo issue #1026).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import xarray as xr

from corrdiff_xr import scoring
from corrdiff_xr._atomic import atomic_path
from corrdiff_xr.dims import LAT, LON, MEMBER, TIME

__all__ = ["configure_parser", "format_table", "open_prediction", "open_reference_netcdf", "run"]

#: the reference's name of the ensemble dimension
REFERENCE_MEMBER_DIM = "ensemble"
_NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``score`` options to ``parser``."""
    parser.add_argument("prediction", help="prediction Zarr store / URL, or reference NetCDF")
    parser.add_argument(
        "--truth",
        help="truth store or NetCDF with the prediction's variable names "
        "(default: group --truth-group of the prediction store)",
    )
    parser.add_argument(
        "--truth-group",
        default=None,
        help="group holding the truth in the prediction store (default: 'truth', or the "
        "store's root when --prediction-group is given)",
    )
    parser.add_argument(
        "--prediction-group",
        default=None,
        help="group holding the ensemble in the prediction store (default: its root)",
    )
    parser.add_argument(
        "--format",
        choices=("auto", "zarr", "reference-netcdf"),
        default="auto",
        help="prediction layout (auto: by file suffix, .nc = reference NetCDF)",
    )
    parser.add_argument("-o", "--output", help="where to write the scores (.nc or Zarr)")
    parser.add_argument(
        "--metrics",
        default=",".join(scoring.METRICS),
        help=f"comma-separated metrics (default {','.join(scoring.METRICS)})",
    )
    parser.add_argument(
        "--estimator",
        choices=("properscoring", "fair"),
        default="properscoring",
        help="CRPS estimator: properscoring (empirical ensemble CDF) or fair (M-1)",
    )
    parser.add_argument("--variables", help="comma-separated variables (default: all)")
    parser.add_argument(
        "--area-weighted",
        action="store_true",
        help="weight spatial means by cos(latitude) of the 'lat' coordinate",
    )
    parser.add_argument("--storage-options", default="{}", help="fsspec options as JSON")
    parser.add_argument("--workers", type=int, default=None, help="threads for dask")
    parser.add_argument("--plots", help="also write PNG maps, spectra and rank histograms here")


def _is_netcdf(path: str) -> bool:
    return str(path).lower().endswith(_NETCDF_SUFFIXES)


def open_reference_netcdf(path: str | os.PathLike) -> dict[str, xr.Dataset]:
    """Open the reference's output NetCDF as lazy Datasets ``prediction``, ``truth``, ``input``.

    Root ``time`` (decoded) and ``lat``/``lon`` become coordinates of every group, and the
    prediction's ``ensemble`` dimension is renamed ``member``. Missing groups are omitted.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"reference NetCDF {path!r} does not exist")
    root = xr.open_dataset(path, engine="netcdf4", chunks={})
    for name in (LAT, LON):
        if name not in root.variables:
            raise ValueError(f"{path}: the reference layout needs a root variable {name!r}")
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
        raise ValueError(f"{path}: no 'prediction' group; is this a reference output NetCDF?")
    return groups


def _open_any(path: str, *, group: str | None, storage_options: dict[str, Any]) -> xr.Dataset:
    if _is_netcdf(path):
        return xr.open_dataset(path, group=group, chunks={})
    return xr.open_zarr(path, group=group, storage_options=storage_options or None)


def open_prediction(
    prediction: str,
    *,
    truth: str | None = None,
    truth_group: str | None = None,
    prediction_group: str | None = None,
    layout: str = "auto",
    storage_options: dict[str, Any] | None = None,
) -> tuple[xr.Dataset, xr.Dataset, xr.Dataset | None]:
    """Open (prediction, truth, inputs-or-None) lazily from either supported layout.

    For a Zarr prediction store without ``truth``, the truth is read from the same store:
    group ``truth_group`` (default ``"truth"``), or, when the ensemble sits in
    ``prediction_group``, the store's root (a canonical store with the target names).
    """
    storage_options = storage_options or {}
    if layout == "reference-netcdf" or (layout == "auto" and _is_netcdf(prediction)):
        groups = open_reference_netcdf(prediction)
        if truth is not None:
            truth_ds = _open_any(truth, group=None, storage_options=storage_options)
        elif "truth" in groups:
            truth_ds = groups["truth"]
        else:
            raise ValueError(f"{prediction}: no 'truth' group and no --truth given")
        return groups["prediction"], truth_ds, groups.get("input")
    pred = _open_any(prediction, group=prediction_group, storage_options=storage_options)
    pred = pred[[n for n, v in pred.data_vars.items() if MEMBER in v.dims]]
    if not pred.data_vars:
        raise ValueError(f"{prediction}: no variable has a {MEMBER!r} dimension")
    if truth is not None:
        truth_ds = _open_any(truth, group=None, storage_options=storage_options)
    else:
        if truth_group is None and prediction_group is None:
            truth_group = "truth"
        try:
            truth_ds = _open_any(prediction, group=truth_group, storage_options=storage_options)
        except (FileNotFoundError, KeyError, OSError, ValueError) as err:
            raise ValueError(
                f"{prediction}: no truth group {truth_group!r}; pass --truth PATH"
            ) from err
    return pred, truth_ds, None


def write_atomic(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` to ``path`` (``.nc`` -> NetCDF, else Zarr) via a sibling temp + rename."""
    target = Path(path)
    with atomic_path(target) as staged:
        if _is_netcdf(str(target)):
            ds.to_netcdf(staged)
        else:
            # fixed-width unicode has no Zarr v3 spec yet; variable-length strings do
            labels = {k: v.astype(object) for k, v in ds.variables.items() if v.dtype.kind == "U"}
            ds.assign_coords(labels).to_zarr(staged, mode="w")
    return target


def format_table(scores: xr.Dataset) -> str:
    """Time-mean scores as a small text table: one row per metric, one column per variable."""
    table = scores["score"]
    if TIME in table.dims:
        table = table.mean(TIME)
    variables = [str(v) for v in table["variable"].values]
    units = (
        [str(u) for u in table["units"].values]
        if "units" in table.coords
        else [""] * len(variables)
    )
    heads = [f"{v} [{u}]" if u else v for v, u in zip(variables, units)]
    width = max(12, *(len(h) + 2 for h in heads))
    lines = ["metric".ljust(14) + "".join(h.rjust(width) for h in heads)]
    for metric in table["metric"].values:
        row = table.sel(metric=metric).values
        lines.append(str(metric).ljust(14) + "".join(f"{x:{width}.4g}" for x in row))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Score, print the table, write ``--output`` and optional plots; return 0."""
    import dask

    storage_options = json.loads(args.storage_options or "{}")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    pred, truth, inputs = open_prediction(
        args.prediction,
        truth=args.truth,
        truth_group=args.truth_group,
        prediction_group=args.prediction_group,
        layout=args.format,
        storage_options=storage_options,
    )
    if args.variables:
        names = [v.strip() for v in args.variables.split(",") if v.strip()]
        missing = [n for n in names if n not in pred.data_vars]
        if missing:
            raise ValueError(f"--variables {missing} not in the prediction {list(pred.data_vars)}")
        pred = pred[names]
    weights = scoring.area_weights(pred) if args.area_weighted else None
    with dask.config.set(scheduler="threads", num_workers=args.workers):
        scores = scoring.summary(
            pred, truth, metrics=metrics, weights=weights, estimator=args.estimator
        ).compute()
        scores.attrs.update(
            prediction=str(args.prediction),
            truth=str(args.truth or f"{args.prediction} (group {args.truth_group or '/'})"),
            area_weighted=int(bool(args.area_weighted)),
        )
        print(format_table(scores))
        if args.output:
            write_atomic(scores, args.output)
            print(f"scores written to {args.output}")
        if args.plots:
            from corrdiff_xr import plot

            written = plot.save_report(pred, truth, args.plots, inputs=inputs)
            print(f"plots written: {', '.join(str(p) for p in written)}")
    return 0
