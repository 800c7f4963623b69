"""``corrdiff-xr inspect SOURCE``: what a source holds and what training/inference would do.

SOURCE is anything the other commands take (a Zarr path or URL, ``catalog:NAME/ENTRY``,
a pair of native archives in a catalog) or a single native archive, which is described by
the axes found in its CF metadata with how to pair it. The report is
:func:`corrdiff_xr.data.report.describe`; only coordinates and one time step per target are
read, unless ``--scan`` asks for the masks over every time; either way no more than
``--scan-budget`` gigabytes (16 by default) of declared size, checked before reading.
"""

from __future__ import annotations

import argparse

from corrdiff_xr.cli import KeyValues, json_object

__all__ = ["configure_parser", "run"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``corrdiff-xr inspect``."""
    add = parser.add_argument
    add("source", help="Zarr path or URL, catalog:NAME/ENTRY, or one native archive")
    add("--param", nargs="*", default={}, action=KeyValues, metavar="KEY=VALUE",
        help="catalog user parameters of a catalog:NAME/ENTRY source")  # fmt: skip
    add("--storage-options", type=json_object, default={}, help="fsspec options (JSON object)")
    add("--scan", action="store_true", help="read every time step to report the masks")
    add("--scan-budget", type=float, default=None, metavar="GB",
        help="gigabytes the report may read (masks, static fields); default 16")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Print the report on ``args.source``; return 0, or 1 when its grids refuse pairing."""
    from corrdiff_xr._redact import redact_url
    from corrdiff_xr.data import SourceError, StoreError, catalog_spec, open_dataset, open_source
    from corrdiff_xr.data.layout import CoordinateError, CoverageError, DataError
    from corrdiff_xr.data.report import describe, describe_archive, describe_refused
    from corrdiff_xr.data.sources.native import _metadata_vars, describe_placement

    options = args.storage_options or None
    try:
        pair = open_source(
            args.source, params=args.param, storage_options=args.storage_options,
            require_targets=False, what="source", params_what="--param",
        )  # fmt: skip
    except (StoreError, SourceError):
        raise
    except DataError as err:
        catalog = catalog_spec(args.source) is not None
        if isinstance(err, CoverageError) or (catalog and isinstance(err, CoordinateError)):
            # the grids' problem, reported as one (with the overlap a store's grids have)
            raw = None if catalog else open_dataset(args.source, storage_options=options)
            print(f"source: {redact_url(args.source)}")
            print(describe_refused(err, raw))
            return 1
        if catalog:
            raise
        one = open_dataset(args.source, storage_options=options)
        print(describe_archive(one, err))
        # its CRS, and how its coordinates were obtained; bounds are no grid to place
        print(describe_placement(one.drop_vars(_metadata_vars(one)[1])))
        return 0
    print(f"source: {redact_url(args.source)}")  # never a password from the URL
    budget = {} if args.scan_budget is None else {"budget_gb": args.scan_budget}
    print(describe(pair, scan=args.scan, **budget))
    return 0
