"""The arguments of ``corrdiff-xr score`` (:mod:`corrdiff_xr.cli.score` runs the command).

Each option's ``type=`` checks its value when the command line is parsed, so a malformed
list of metrics, numbers or ``KEY=VALUE`` pairs is one argparse error before any data opens.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from corrdiff_xr import scoring
from corrdiff_xr.cli import bounded, json_object
from corrdiff_xr.config import ConfigError, parse_overrides

__all__ = ["configure_parser"]


def _metric_list(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in scoring.METRIC_TABLE]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown metric(s) {', '.join(unknown) or repr(text)}; choose from "
            f"{','.join(scoring.METRIC_TABLE)}"
        )
    return names


def _numbers(text: str, what: str, kind: Callable[[str], float] = float) -> list[float]:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{what}: expected comma-separated numbers, got {text!r}"
        ) from None


def _thresholds(text: str) -> tuple[str | None, list[float]]:
    """``1,10`` (every variable) or ``tp=1,10`` (one variable)."""
    name, _, values = text.rpartition("=")
    return (name.strip() or None), _numbers(values, "--thresholds")


def _name_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def _key_value(text: str) -> str:
    """An argparse ``type=`` checking one ``KEY=VALUE`` (parsed with the others when run)."""
    try:
        parse_overrides([text])
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _add_metric_options(parser: argparse.ArgumentParser) -> None:
    """Options of the metrics that take some (see ``Metric.options``), regions, figures."""
    parser.add_argument(
        "--thresholds",
        nargs="+",
        action="extend",
        type=_thresholds,
        metavar="[VAR=]T1,T2",
        help="event thresholds (value >= T, the variable's units) of fss, brier, reliability, "
        "roc, roc_auc and twcrps: one list for every variable, or VAR=... per variable",
    )
    parser.add_argument(
        "--percentiles",
        type=lambda t: _numbers(t, "--percentiles"),
        help="fss: threshold each field at its own percentiles, e.g. 90,99 (default 90)",
    )
    parser.add_argument(
        "--confidence",
        type=bounded(float, minimum=0.5, maximum=0.999),
        help="add block-bootstrap intervals over time at this level (e.g. 0.95) to every "
        "score, and for several forecasts to their differences with the first",
    )
    parser.add_argument(
        "--block-length",
        type=bounded(int, minimum=1),
        help="times per bootstrap block (default: the cube root of the number of times)",
    )
    parser.add_argument(
        "--resamples", type=bounded(int, minimum=10), default=1000, help="bootstrap resamples"
    )
    parser.add_argument(
        "--windows",
        type=lambda t: _numbers(t, "--windows", int),
        help="fss: neighbourhood sizes in grid points, e.g. 1,3,9",
    )
    parser.add_argument("--plots", help="also write PNG maps, spectra and rank histograms here")
    parser.add_argument("--report", help="also write one self-contained HTML page here")
    parser.add_argument(
        "--report-times",
        type=_name_list,
        metavar="T1,T2",
        help="times drawn as maps in --plots/--report: positions (0, -1) or ISO labels "
        "(default: the first)",
    )
    parser.add_argument(
        "--regions",
        nargs="+",
        action="extend",
        metavar="SPEC",
        help="also score by region (a 'region' dim): land, sea (from a land-sea fraction such "
        "as lsm), valid (where the truth is known) or a box NAME=LAT0:LAT1,LON0:LON1",
    )
    parser.add_argument(
        "--land-sea-mask",
        metavar="FILE[:VAR]",
        help="NetCDF/Zarr with the land-sea fraction (1 = land) for --regions land/sea, when "
        "neither the truth nor the prediction holds one",
    )


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``score`` options to ``parser``."""
    parser.add_argument("prediction", help="prediction Zarr store / URL, or reference NetCDF")
    parser.add_argument(
        "compare",
        nargs="?",
        help="a second prediction (same layout) scored on the first's truth; the table gets "
        "a 'forecast' dim, and with --confidence the interval of each difference",
    )
    parser.add_argument(
        "--truth",
        help="truth store or NetCDF with the prediction's variable names, or catalog:NAME/ENTRY "
        "or a canonical store (its targets) (default: group --truth-group of the prediction store)",
    )
    parser.add_argument(
        "--truth-param",
        nargs="+",
        action="extend",
        type=_key_value,
        metavar="KEY=VALUE",
        help="user parameters of a catalog:NAME/ENTRY --truth, e.g. cache_dir=/data",
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
        help=f"comma-separated metrics (default {','.join(scoring.METRICS)}) out of "
        f"{','.join(scoring.METRIC_TABLE)}",
    )
    _add_metric_options(parser)
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
        "--baseline",
        choices=("bilinear",),
        help="also score bilinear interpolation of the coarse inputs (needs them: a reference "
        "NetCDF's input group, or --truth as a canonical store or catalog entry); the table "
        "then has a 'forecast' dim: prediction, bilinear",
    )
