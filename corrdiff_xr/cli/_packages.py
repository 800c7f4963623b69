"""Command-line options and opening for runs of a published CorrDiff package.

``--checkpoint`` may name a package (a directory or a zip, :func:`~corrdiff_xr.inference.
packages.is_package_path`); ``--data`` is then the user's own coarse archive (a Zarr path or
URL), put on the package's grids with ``--name-map`` and ``--regrid``
(:meth:`Package.pair <corrdiff_xr.model.packages.package.Package.pair>`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from corrdiff_xr.cli import ItemsAction

if TYPE_CHECKING:
    from corrdiff_xr.data.pair import DownscalingData
    from corrdiff_xr.model.packages import Package

__all__ = ["NameMap", "add_package_options", "model_and_pair", "package_request"]


def _selector(text: str) -> str | dict[str, Any]:
    """``geopotential@500`` -> ``{"variable": "geopotential", "level": 500}``; else the name."""
    name, sep, level = text.partition("@")
    if not sep:
        return name
    try:
        value = float(level)
    except ValueError:
        raise argparse.ArgumentTypeError(f"level {level!r} of {text!r} is not a number") from None
    return {"variable": name, "level": int(value) if value.is_integer() else value}


class NameMap(ItemsAction):
    """PACKAGE_NAME=ARCHIVE_NAME[@LEVEL] items -> ``{package name: selector}``."""

    def convert(self, given: list[Any]) -> object:
        out = {}
        for item in given:
            key, sep, value = item.partition("=")
            if not sep or not key or not value:
                raise argparse.ArgumentTypeError(
                    f"{item!r}: expected PACKAGE_NAME=ARCHIVE_NAME[@LEVEL], e.g. z500=geopotential@500"
                )
            out[key] = _selector(value)
        return out


def add_package_options(group: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--name-map`` and ``--regrid``, used when ``--checkpoint`` is a package."""
    group.add_argument(
        "--name-map",
        nargs="*",
        default={},
        action=NameMap,
        metavar="NAME=VAR[@LEVEL]",
        help="with a package: archive variable of a package input, e.g. z500=geopotential@500 "
        "(default: ERA5/ARCO and GRIB names)",
    )
    group.add_argument(
        "--regrid",
        choices=("bilinear",),
        help="with a package: interpolate an archive that lacks the package's input grid points",
    )


def model_and_pair(
    args: argparse.Namespace, open_data: Callable[[], DownscalingData], error: type[Exception]
) -> tuple[Package | str, DownscalingData]:
    """``(model, pair)``: the opened package and the archive on its grids, or the checkpoint
    path and ``open_data()``'s pair; package-only options without a package are refused."""
    from corrdiff_xr.inference.packages import is_package_path

    if not is_package_path(args.checkpoint):
        if args.name_map or args.regrid:
            raise error(
                "--name-map and --regrid apply to a package (a directory or zip), but "
                f"--checkpoint {args.checkpoint} is a checkpoint file; drop them"
            )
        return args.checkpoint, open_data()
    if not args.data or args.data.startswith("catalog:"):
        raise error(
            "with a package as --checkpoint, give the coarse archive as --data PATH_OR_URL "
            "(a Zarr store of the package's input variables)"
        )
    from corrdiff_xr.data import open_dataset
    from corrdiff_xr.model.packages import open_package

    package = open_package(args.checkpoint)
    return package, package.pair(
        open_dataset(args.data), name_map=args.name_map, regrid=args.regrid
    )


def package_request(args: argparse.Namespace) -> dict[str, Any]:
    """The package options that change a run's output, for its recorded request."""
    given = {"name_map": args.name_map, "regrid": args.regrid}
    return {k: v for k, v in given.items() if v}
