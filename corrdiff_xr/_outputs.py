"""What a command may replace: only outputs that corrdiff_xr wrote itself and marked as such.

Every output carries a marker naming the kind of product: Zarr stores and NetCDF files a
global attribute :data:`PRODUCT_ATTR` (``"generate"``, ``"score"`` ...), directories a small
file :data:`MARKER_FILE` (demo outputs, training runs). :func:`check_output` is the one rule
the commands apply before writing: a missing path or an empty directory may be written; an
existing output of the same kind only with ``overwrite``; anything else (a user's file, a
foreign store, another kind of product) is refused with a message naming the path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from corrdiff_xr.errors import OutputExistsError

__all__ = ["MARKER_FILE", "PRODUCT_ATTR", "check_output", "mark_directory", "product_of"]

PRODUCT_ATTR = "corrdiff_xr_product"
MARKER_FILE = ".corrdiff_xr_output"


def _zarr_attrs(path: Path) -> dict | None:
    for name, key in (("zarr.json", "attributes"), (".zattrs", None)):
        meta = path / name
        if meta.is_file():
            try:
                data = json.loads(meta.read_text())
            except (OSError, ValueError):
                return None
            return (data.get(key) if key else data) or {}
    return None


def _netcdf_attr(path: Path) -> str | None:
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not (head.startswith(b"\x89HDF") or head.startswith(b"CDF")):
        return None
    try:
        import netCDF4

        with netCDF4.Dataset(path) as nc:
            return str(nc.getncattr(PRODUCT_ATTR)) if PRODUCT_ATTR in nc.ncattrs() else None
    except OSError:
        return None


def product_of(path: str | os.PathLike) -> str | None:
    """The kind of corrdiff_xr product at ``path`` (its marker), or None for anything else."""
    path = Path(path)
    if path.is_symlink():
        return None  # never follow a link into someone else's data
    if path.is_dir():
        marker = path / MARKER_FILE
        if marker.is_file():
            try:
                return str(json.loads(marker.read_text())["kind"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
        attrs = _zarr_attrs(path)
        return None if attrs is None or PRODUCT_ATTR not in attrs else str(attrs[PRODUCT_ATTR])
    if path.is_file():
        return _netcdf_attr(path)
    return None


def mark_directory(path: str | os.PathLike, kind: str) -> None:
    """Mark a directory this process created (and owns) as a corrdiff_xr ``kind`` output."""
    from corrdiff_xr._atomic import write_bytes

    write_bytes(Path(path) / MARKER_FILE, json.dumps({"kind": kind}).encode(), fsync=False)


def check_output(
    path: str | os.PathLike, *, kind: str, overwrite: bool = False, what: str = "output"
) -> bool:
    """Refuse to write ``path`` unless that cannot destroy anything the user made.

    Returns True when ``path`` holds a previous ``kind`` output that will be replaced, False
    when there is nothing there (or an empty directory).

    Raises
    ------
    OutputExistsError
        ``path`` holds something corrdiff_xr did not write as a ``kind`` output (never
        replaced), or such an output while ``overwrite`` is False.
    """
    path = Path(path)
    if not os.path.lexists(path):
        return False
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        return False
    found = product_of(path)
    if found != kind:
        desc = "a file" if path.is_file() else "a link" if path.is_symlink() else "a directory"
        made = f"a corrdiff-xr '{found}' output" if found else f"{desc} corrdiff-xr did not write"
        raise OutputExistsError(
            f"{what} {path} exists and is {made}; refusing to replace it (choose another path, "
            "or move it away yourself)"
        )
    if not overwrite:
        raise OutputExistsError(
            f"{what} {path} exists (an earlier corrdiff-xr '{kind}' output); pass --overwrite "
            "to replace it"
        )
    return True
