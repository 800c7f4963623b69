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

Outputs never replace what ``score`` did not write: the output carries the global attribute
``corrdiff_xr_product = "score"`` and the ``--plots`` folder a marker file, and an existing
one is replaced only with ``--overwrite`` (anything else at those paths is refused, see
:mod:`corrdiff_xr._outputs`). Both are checked before anything is computed.
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path
from typing import Any

import xarray as xr

from corrdiff_xr import scoring
from corrdiff_xr._atomic import atomic_path
from corrdiff_xr._outputs import (
    PRODUCT_ATTR,
    check_output,
    check_output_directory,
    local_output,
    output_directory,
    writing,
)
from corrdiff_xr.cli import bounded, json_object
from corrdiff_xr.dims import LAT, LON, MEMBER, TIME
from corrdiff_xr.errors import CorrDiffError, InputNotFoundError

__all__ = [
    "ScoreError",
    "configure_parser",
    "format_table",
    "open_prediction",
    "open_reference_netcdf",
    "run",
    "write_atomic",
]

#: the reference's name of the ensemble dimension
REFERENCE_MEMBER_DIM = "ensemble"
_NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf")
#: the product kind of score outputs and of the --plots folder (see corrdiff_xr._outputs)
KIND, PLOTS_KIND = "score", "score-plots"
PLOT_FILES = ("maps.png", "spectra.png", "rank_histogram.png")


class ScoreError(CorrDiffError, ValueError):
    """The inputs cannot be scored as given (not found, wrong layout, mismatched, ...)."""


def _metric_list(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in scoring.METRICS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown metric(s) {', '.join(unknown) or repr(text)}; choose from "
            f"{','.join(scoring.METRICS)}"
        )
    return names


def _name_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


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
    parser.add_argument(
        "-o", "--output", help="where to write the scores (local path; .nc or Zarr)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier score output / --plots folder (never anything else)",
    )
    parser.add_argument(
        "--metrics",
        type=_metric_list,
        default=list(scoring.METRICS),
        help=f"comma-separated metrics (default {','.join(scoring.METRICS)})",
    )
    parser.add_argument(
        "--estimator",
        choices=("properscoring", "fair"),
        default="properscoring",
        help="CRPS estimator: properscoring (empirical ensemble CDF) or fair (M-1)",
    )
    parser.add_argument(
        "--variables", type=_name_list, help="comma-separated variables (default: all)"
    )
    parser.add_argument(
        "--area-weighted",
        action="store_true",
        help="weight spatial means by cos(latitude) of the 'lat' coordinate",
    )
    parser.add_argument(
        "--storage-options", type=json_object, default={}, help="fsspec options as a JSON object"
    )
    parser.add_argument(
        "--workers", type=bounded(int, minimum=1), default=None, help="threads for dask"
    )
    parser.add_argument(
        "--plots", help="also write PNG maps, spectra and rank histograms to this folder"
    )


def _is_netcdf(path: str) -> bool:
    return str(path).lower().endswith(_NETCDF_SUFFIXES)


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
    netcdf = _is_netcdf(path)
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

    Raises
    ------
    InputNotFoundError
        A local input does not exist.
    ScoreError
        An input cannot be opened, or holds no ensemble / truth.
    """
    storage_options = storage_options or {}
    if layout == "reference-netcdf" or (layout == "auto" and _is_netcdf(prediction)):
        groups = open_reference_netcdf(prediction)
        if truth is not None:
            truth_ds = _open_any(truth, group=None, storage_options=storage_options, role="--truth")
        elif "truth" in groups:
            truth_ds = groups["truth"]
        else:
            raise ScoreError(f"{prediction}: no 'truth' group and no --truth given")
        return groups["prediction"], truth_ds, groups.get("input")
    pred = _open_any(
        prediction, group=prediction_group, storage_options=storage_options, role="prediction"
    )
    pred = pred[[n for n, v in pred.data_vars.items() if MEMBER in v.dims]]
    if not pred.data_vars:
        raise ScoreError(
            f"{prediction}: no variable has a {MEMBER!r} dimension (is it an ensemble? a "
            "reference NetCDF needs --format reference-netcdf)"
        )
    if truth is not None:
        truth_ds = _open_any(truth, group=None, storage_options=storage_options, role="--truth")
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
    return pred, truth_ds, None


def write_atomic(ds: xr.Dataset, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``ds`` to ``path`` (``.nc`` -> NetCDF, else Zarr) via a sibling temp + rename.

    The output is marked as a ``score`` product; an existing one is replaced only with
    ``overwrite``, anything else at ``path`` never (:func:`corrdiff_xr._outputs.check_output`).
    """
    target = Path(path)
    check_output(target, kind=KIND, overwrite=overwrite, what="score output")
    ds = ds.assign_attrs({PRODUCT_ATTR: KIND})
    with atomic_path(target) as staged:
        if _is_netcdf(str(target)):
            # built in memory (the table is small) so that a failed write is an OSError
            # naming its cause; the NetCDF library reports a full disk as "HDF error"
            staged.write_bytes(bytes(ds.to_netcdf(engine="netcdf4")))
        else:
            # fixed-width unicode has no Zarr v3 spec yet; variable-length strings do
            labels = {k: v.astype(object) for k, v in ds.variables.items() if v.dtype.kind == "U"}
            with warnings.catch_warnings():
                # consolidated metadata is a zarr-python extension to v3; it saves remote reads
                warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
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


def _checked_outputs(args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    """``-o`` and ``--plots`` as local paths, refused now (before any work) if not replaceable."""
    output = local_output(args.output, option="-o/--output") if args.output else None
    plots = local_output(args.plots, option="--plots") if args.plots else None
    if output and plots and output.absolute() == plots.absolute():
        raise ScoreError(f"-o and --plots are both {output}; give them different paths")
    if output:
        check_output(output, kind=KIND, overwrite=args.overwrite, what="score output")
    if plots:
        check_output_directory(
            plots, kind=PLOTS_KIND, names=PLOT_FILES, overwrite=args.overwrite,
            what="--plots folder",
        )
    return output, plots


def _lazy_scores(pred: xr.Dataset, truth: xr.Dataset, args: argparse.Namespace) -> xr.Dataset:
    weights = None
    if args.area_weighted:
        if LAT not in pred.coords and LAT not in pred:
            raise ScoreError(
                f"--area-weighted needs a latitude coordinate {LAT!r} in {args.prediction}; "
                f"it has coordinates {sorted(map(str, pred.coords))}"
            )
        weights = scoring.area_weights(pred)
    try:
        return scoring.summary(
            pred, truth, metrics=args.metrics, weights=weights, estimator=args.estimator
        )
    except (KeyError, ValueError) as err:  # scoring's checks: mismatched variables, dims, ...
        raise ScoreError(f"cannot score {args.prediction} against its truth: {err}") from err


def run(args: argparse.Namespace) -> int:
    """Score, print the table, write ``--output`` and optional plots; return 0."""
    import dask

    output, plots = _checked_outputs(args)
    pred, truth, inputs = open_prediction(
        args.prediction,
        truth=args.truth,
        truth_group=args.truth_group,
        prediction_group=args.prediction_group,
        layout=args.format,
        storage_options=args.storage_options,
    )
    if args.variables:
        missing = [n for n in args.variables if n not in pred.data_vars]
        if missing:
            raise ScoreError(
                f"--variables {', '.join(missing)}: not in the prediction {args.prediction} "
                f"(it has {', '.join(map(str, pred.data_vars))})"
            )
        pred = pred[args.variables]
    with dask.config.set(scheduler="threads", num_workers=args.workers):
        scores = _lazy_scores(pred, truth, args).compute()
        scores.attrs.update(
            prediction=str(args.prediction),
            truth=str(args.truth or f"{args.prediction} (group {args.truth_group or '/'})"),
            area_weighted=int(bool(args.area_weighted)),
        )
        print(format_table(scores))
        if output:
            with writing(output, what="score output"):
                write_atomic(scores, output, overwrite=args.overwrite)
            print(f"scores written to {output}")
        if plots:
            from corrdiff_xr import plot

            with writing(plots, what="--plots folder"), output_directory(
                plots, kind=PLOTS_KIND, names=PLOT_FILES, overwrite=args.overwrite,
                what="--plots folder",
            ) as staged:
                written = plot.save_report(pred, truth, staged, inputs=inputs)
            print(f"plots written to {plots}: {', '.join(p.name for p in written)}")
    return 0
