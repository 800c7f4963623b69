"""``corrdiff-xr calibrate``: choose the sampler whose spread matches its error, record it.

Downscales a validation period (``--data`` with its targets, ``--time-range``) with each
candidate sampler (:data:`corrdiff_xr.inference.calibrate.CANDIDATES`, the checkpoint's own
defaults first), prints the CRPS and spread-skill table, and writes a copy of the checkpoint
(``--out``, a new file: the input is never changed) whose sampler defaults are the chosen
setting; ``generate`` and ``downscale`` use them whenever no sampler is given. ``--json``
also writes the table (a new file, or with ``--overwrite`` a plain file it replaces; never
through a link). Both are written atomically under a lock
(:func:`corrdiff_xr._lock.output_lock`), and the checkpoint is removed if the table fails.

``--checkpoint`` may be a published package (a directory or zip): ``--data`` is then the
coarse archive and ``--truth`` a Zarr store of the package's outputs on its output grid
(:meth:`Package.pair <corrdiff_xr.model.packages.package.Package.pair>`, with ``--name-map``
and ``--regrid``); ``--out`` is then one of our checkpoints, the package's networks and codec
with the chosen sampler defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from corrdiff_xr.cli import KeyValues, bounded
from corrdiff_xr.cli._packages import add_package_options
from corrdiff_xr.cli._times import TimeRange, select_times
from corrdiff_xr.errors import CorrDiffError

if TYPE_CHECKING:
    from corrdiff_xr.data.pair import DownscalingData
    from corrdiff_xr.model import CorrDiff

__all__ = ["CalibrateError", "configure_parser", "run"]


class CalibrateError(CorrDiffError, ValueError):
    """Options or data that do not allow a calibration."""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``corrdiff-xr calibrate``."""
    add = parser.add_argument
    add("--checkpoint", required=True,
        help="CorrDiff checkpoint (residual model) or a published package to calibrate")  # fmt: skip
    add(
        "--data",
        required=True,
        help="validation data with targets: Zarr path/URL or catalog:NAME/ENTRY (with a "
        "package: its coarse archive)",
    )
    add("--truth", metavar="PATH_OR_URL",
        help="with a package: Zarr store of its outputs on its output grid (the targets)")  # fmt: skip
    add_package_options(parser)
    add("--param", nargs="*", default={}, action=KeyValues, metavar="KEY=VALUE",
        help="catalog user parameters of a catalog:NAME/ENTRY source")  # fmt: skip
    add("--time-range", nargs="+", action=TimeRange, metavar="TIME",
        help="validation period START END [STEP] (ISO 8601, the data's calendar)")  # fmt: skip
    add("--members", type=bounded(int, minimum=2), default=8, help="ensemble size (default 8)")
    add("--seed", type=bounded(int, minimum=0), default=0, help="seed (default 0)")
    add("--patch", type=bounded(int, minimum=1), help="patch side for patched sampling")
    add("--tolerance", type=bounded(float, minimum=0.0, maximum=0.5), default=0.01,
        help="how much worse than the baseline's CRPS the choice may be (default 0.01)")  # fmt: skip
    add("--confidence", type=bounded(float, above=0.0, maximum=0.999), default=0.95,
        help="accept a setting only if its CRPS is within --tolerance of the baseline's at "
             "this confidence (block bootstrap over time; default 0.95)")  # fmt: skip
    add("--precision", choices=("fp32", "bf16"),
        help="the residual network's arithmetic for every candidate, saved with the choice "
             "(default: the model's defaults', else fp32)")  # fmt: skip
    add("--out", required=True, help="the calibrated checkpoint to write (a new file)")
    add("--json", help="also write the table here (a new file, unless --overwrite)")
    add("--overwrite", action="store_true", help="replace an existing --json file (never a link)")


def run(args: argparse.Namespace) -> int:
    """Calibrate, print the table, write ``args.out``; return 0."""
    from corrdiff_xr._atomic import remove_leftovers
    from corrdiff_xr._lock import output_lock
    from corrdiff_xr._outputs import local_output, writing

    out = local_output(args.out, option="--out").absolute()
    table = local_output(args.json, option="--json").absolute() if args.json else None
    with contextlib.ExitStack() as locks:  # one run at a time per output
        for path, option in ((out, "--out"), (table, "--json")):
            if path is not None:
                with writing(path, what=option):  # a lock file that cannot be made: say why
                    locks.enter_context(output_lock(path, what=f"{option} {path}"))
                remove_leftovers(path)  # a killed run's hidden partial copy (we hold the lock)
        _check_outputs(args, out, table)
        return _calibrate(args, out, table)


def _check_outputs(args: argparse.Namespace, out: Path, table: Path | None) -> None:
    """Refuse an existing --out (links included), and an existing --json without --overwrite."""
    if os.path.lexists(out) or out.resolve() == Path(args.checkpoint).resolve():
        raise CalibrateError(f"--out {out} exists; write the calibrated checkpoint to a new file")
    if table is None:
        return
    if table == out:
        raise CalibrateError(f"--json {table} is the --out checkpoint; choose another path")
    if os.path.islink(table) or (os.path.lexists(table) and not table.is_file()):
        raise CalibrateError(
            f"--json {table} exists and is not a plain file; refusing to write through it "
            "(choose another path)"
        )
    if table.exists() and not args.overwrite:
        raise CalibrateError(f"--json {table} exists; pass --overwrite to replace it")


def _calibrate(args: argparse.Namespace, out: Path, table: Path | None) -> int:
    from corrdiff_xr._atomic import atomic_path, remove, write_bytes
    from corrdiff_xr._outputs import writing
    from corrdiff_xr.inference.calibrate import calibrate

    model, pair = _model_and_pair(args)
    if args.time_range:
        where = select_times(pair.dataset["time"].values, None, args.time_range, CalibrateError)
        pair = pair.isel(time=where)
    if model.residual is None:
        raise CalibrateError(
            f"{args.checkpoint} is a regression-only checkpoint: it has no sampler to calibrate"
        )
    result = calibrate(pair, model, members=args.members, seed=args.seed, patch=args.patch,
                       tolerance=args.tolerance, confidence=args.confidence,
                       precision=args.precision)  # fmt: skip
    print(result.format())
    model.sampler_config = result.chosen
    with writing(out, what="--out"), atomic_path(out, replace=False) as staged:
        model.save(staged)  # renamed in only if --out is still absent (never over a link)
    if table is not None:
        try:
            with writing(table, what="--json file"):
                write_bytes(table, json.dumps({"table": list(result.table)}, indent=2).encode())
        except BaseException:
            remove(out)  # no half result: the checkpoint goes with its table
            raise
    print(
        f"wrote {out} (sampler defaults: {result.chosen.solver}, {result.chosen.num_steps} steps)"
    )
    return 0


def _model_and_pair(args: argparse.Namespace) -> tuple[CorrDiff, DownscalingData]:
    """``(CorrDiff, pair)``: a checkpoint and ``--data``, or a package's model and ``--data``
    (its coarse archive) on its grids with ``--truth`` as the targets."""
    from corrdiff_xr.inference.packages import is_package_path

    if not is_package_path(args.checkpoint):
        given = [o for o, v in (("--truth", args.truth), ("--name-map", args.name_map),
                                ("--regrid", args.regrid)) if v]  # fmt: skip
        if given:
            raise CalibrateError(
                f"{', '.join(given)}: only for a package (a directory or zip), but --checkpoint "
                f"{args.checkpoint} is a checkpoint file; drop them"
            )
        from corrdiff_xr.data import open_source
        from corrdiff_xr.model import CorrDiff

        pair = open_source(args.data, params=args.param, what="--data", params_what="--param")
        return CorrDiff.load(args.checkpoint), pair
    if args.data.startswith("catalog:") or args.param or not args.truth:
        raise CalibrateError(
            "with a package as --checkpoint, give its coarse archive as --data PATH_OR_URL and "
            "the truth of its outputs on its output grid as --truth PATH_OR_URL (Zarr stores; "
            "no --param)"
        )
    from corrdiff_xr.data import open_dataset
    from corrdiff_xr.model.packages import open_package

    package = open_package(args.checkpoint)
    pair = package.pair(open_dataset(args.data), name_map=args.name_map, regrid=args.regrid,
                        truth=open_dataset(args.truth))  # fmt: skip
    return package.model, pair
