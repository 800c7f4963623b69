"""``corrdiff-xr convert``: a reference dataset (HRRR-Mini NetCDF, CWB Zarr), or any source, to a store.

The conversions are :mod:`corrdiff_xr.data.sources.reference`; layout ``source`` copies what
:func:`corrdiff_xr.data.open_source` opens (a ``catalog:NAME/ENTRY``, say a pair of native
archives, with ``--param``) into a canonical store with its statistics, for those who want a
copy: every command also reads the source directly. This module checks the options
(numbers, options of the other layout, a URL where a local path is needed) and the
destination before reading anything: an existing destination is replaced only if it is an
earlier ``convert`` output and ``--overwrite`` is given, never a user's file or directory or
another product (:mod:`corrdiff_xr._outputs`). One run at a time writes a destination
(:func:`corrdiff_xr._lock.output_lock`); it first removes what a killed run left. User errors
raise :class:`~corrdiff_xr.errors.CorrDiffError` subclasses and OS failures while writing an
:class:`OSError` naming the destination; the dispatcher prints either as one line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

from corrdiff_xr.cli import KeyValues, bounded
from corrdiff_xr.data.sources.reference import (
    ConversionError,
    cwb_to_canonical,
    hrrr_mini_to_canonical,
)
from corrdiff_xr.data.validate import validate
from corrdiff_xr.data.write import write_dataset
from corrdiff_xr.dims import TIME

__all__ = ["LAYOUTS", "configure_parser", "run"]

LAYOUTS = ("hrrr-mini", "cwb", "source")
KIND = "convert"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``corrdiff-xr convert``."""
    add = parser.add_argument
    add("layout", choices=LAYOUTS, help="layout of the source dataset")
    add("source", help="HRRR-Mini NetCDF file, CWB Zarr directory, or (layout source) any source")
    add("dest", help="canonical Zarr store to write (local path)")
    add("--stats", help="HRRR-Mini stats.json (default: next to the source)")
    add("--window", help="HRRR-Mini: keep the samples of window ROW,COL or 'most_common'")
    add("--time-chunk", type=bounded(int, minimum=1), default=1, help="time steps per chunk")
    add("--keep-invalid", action="store_true", help="CWB: keep times flagged invalid")
    add(
        "--param",
        nargs="*",
        default={},
        action=KeyValues,
        metavar="KEY=VALUE",
        help="source: catalog user parameters of a catalog:NAME/ENTRY source",
    )
    add(
        "--overwrite",
        action="store_true",
        help="replace dest if it is an earlier convert output (never anything else)",
    )


def _parse_window(text: str | None) -> tuple[int, int] | str | None:
    if text is None or text == "most_common":
        return text
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ConversionError(
            f"--window: expected ROW,COL (two integers >= 0) or most_common, got {text!r}"
        )
    return int(parts[0]), int(parts[1])


def _check_options(args: argparse.Namespace) -> Path:
    """Refuse options of the other layout (ignoring them would mislead); the local dest."""
    from corrdiff_xr._outputs import local_output

    other = {
        "hrrr-mini": ("keep_invalid", "param"),
        "cwb": ("stats", "window", "param"),
        "source": ("stats", "window", "keep_invalid"),
    }[args.layout]
    given = [f"--{name.replace('_', '-')}" for name in other if getattr(args, name)]
    if given:
        raise ConversionError(f"{', '.join(given)} does not apply to layout {args.layout!r}")
    return local_output(args.dest, option="dest").absolute()


def run(args: argparse.Namespace) -> int:
    """Convert ``args.source`` to a canonical Zarr store at ``args.dest``; return 0."""
    from corrdiff_xr._lock import output_lock
    from corrdiff_xr._outputs import writing

    dest = _check_options(args)
    # one convert at a time per destination; a second fails at once naming the first
    with contextlib.ExitStack() as lock:
        with writing(dest, what="destination"):  # a lock file that cannot be made: say why
            lock.enter_context(output_lock(dest, what=f"destination {dest}"))
        return _convert(args, dest)


def _convert(args: argparse.Namespace, dest: Path) -> int:
    from corrdiff_xr._atomic import remove_leftovers
    from corrdiff_xr._outputs import check_output, writing

    remove_leftovers(dest)  # hidden partial copies of a killed run (we hold the lock)
    check_output(dest, kind=KIND, overwrite=args.overwrite, what="destination")
    if args.layout == "hrrr-mini":
        default_stats = os.path.join(os.path.dirname(args.source), "stats.json")
        ds, stats = hrrr_mini_to_canonical(
            args.source, args.stats or default_stats, window=_parse_window(args.window)
        )
    elif args.layout == "cwb":
        ds, stats = cwb_to_canonical(args.source, keep_invalid=args.keep_invalid)
    else:
        from corrdiff_xr.data import open_source

        pair = open_source(args.source, params=args.param, what="source", params_what="--param")
        ds, stats = pair.dataset, pair.stats
    validate(ds, check_values=False)  # refuse to write a store open_pair would reject
    ds = ds.chunk({TIME: args.time_chunk})
    for var in ds.variables.values():
        var.encoding.clear()
    with writing(dest, what="destination"):
        write_dataset(ds, dest, stats=stats, overwrite=args.overwrite, kind=KIND)
    print(f"wrote {dest}: {len(ds.time)} times, variables {list(ds.data_vars)}")
    return 0
