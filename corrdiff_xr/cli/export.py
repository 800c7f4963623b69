"""``corrdiff-xr export``: write a checkpoint trained here as a generic CorrDiff package.

``corrdiff-xr export CHECKPOINT DIR --data SOURCE`` writes ``DIR`` in the layout Earth2Studio's
generic ``CorrDiff.load_model`` reads (:func:`corrdiff_xr.model.packages.export.export_package`):
the networks as PhysicsNeMo ``.mdlus`` files, metadata, statistics, and the fine grid, coarse
grid and static fields of ``--data`` (the data the model was trained on, or any on its grid).
``DIR`` must not exist or be empty unless ``--overwrite``; it is built beside the target and
renamed into place, under a lock, so a failed or concurrent run never leaves half a package.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings

from corrdiff_xr.cli import KeyValues

__all__ = ["configure_parser", "run"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``corrdiff-xr export``."""
    add = parser.add_argument
    add("checkpoint", help="CorrDiff checkpoint written by train or calibrate")
    add("directory", help="package directory to write (absent or empty, unless --overwrite)")
    add("--data", required=True,
        help="data on the model's grid with its static fields: Zarr path/URL or catalog:NAME/ENTRY")  # fmt: skip
    add("--param", nargs="*", default={}, action=KeyValues, metavar="KEY=VALUE",
        help="catalog user parameters of a catalog:NAME/ENTRY source")  # fmt: skip
    add("--overwrite", action="store_true", help="replace an existing package directory")


def run(args: argparse.Namespace) -> int:
    """Export, print what was written; return 0."""
    from corrdiff_xr._atomic import remove_leftovers
    from corrdiff_xr._lock import output_lock
    from corrdiff_xr._outputs import local_output, writing
    from corrdiff_xr.model.packages.export import export_package

    out = local_output(args.directory, option="DIRECTORY").absolute()
    with contextlib.ExitStack() as lock:  # one run at a time per package
        with writing(out, what="DIRECTORY"):  # a lock file that cannot be made: say why
            lock.enter_context(output_lock(out, what=f"DIRECTORY {out}"))
        remove_leftovers(out)  # a killed run's hidden partial copy (we hold the lock)
        with writing(out, what="DIRECTORY"), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            export_package(
                args.checkpoint, args.data, out, overwrite=args.overwrite, params=args.param
            )
    for warning in caught:  # what Earth2Studio will do differently, one line each
        print(f"corrdiff-xr export: warning: {warning.message}", file=sys.stderr)
    print(f"wrote {out}")
    return 0
