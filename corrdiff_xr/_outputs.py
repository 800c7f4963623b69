"""What a command may replace: only outputs that corrdiff_xr wrote itself and marked as such.

Every output carries a marker naming the kind of product: Zarr stores and NetCDF files a
global attribute :data:`PRODUCT_ATTR` (``"generate"``, ``"score"`` ...), directories a small
file :data:`MARKER_FILE` (demo outputs, training runs). :func:`check_output` is the one rule
the commands apply before writing: a missing path or an empty directory may be written; an
existing output of the same kind only with ``overwrite``; anything else (a user's file, a
foreign store, another kind of product) is refused with a message naming the path.
:func:`check_output_directory` and :func:`output_directory` apply it to a folder of several
outputs (demo, score's figures): an earlier one is replaced only if it holds nothing but what
the command writes.

:func:`writing` wraps a command's writes: an operating-system failure (full disk, read-only
file system, file-size limit, a parent that is a file) becomes an :class:`OSError` of the
same type whose message names the output the user asked for (not the hidden temporary it was
staged at) and what to do. :func:`local_output` refuses URLs where only local paths work.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from corrdiff_xr._atomic import atomic_contents, remove, remove_stale, write_bytes
from corrdiff_xr.errors import CorrDiffError, OutputExistsError

__all__ = [
    "MARKER_FILE",
    "PRODUCT_ATTR",
    "OutputPathError",
    "check_output",
    "check_output_directory",
    "local_output",
    "mark_directory",
    "output_directory",
    "product_of",
    "writing",
]

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
    if not head.startswith((b"\x89HDF", b"CDF")):
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


class OutputPathError(CorrDiffError, ValueError):
    """An output path that cannot be written as given (e.g. a URL where a local path is needed)."""


def _is_leftover(name: str) -> bool:
    # what a killed writer leaves (corrdiff_xr._atomic's hidden siblings)
    return name.startswith(".") and (".tmp-" in name or ".old-" in name)


def check_output_directory(
    path: str | os.PathLike,
    *,
    kind: str,
    names: Sequence[str],
    overwrite: bool = False,
    what: str = "output directory",
) -> bool:
    """:func:`check_output` for a folder of several outputs; True if an earlier one is there.

    An earlier ``kind`` directory may be replaced (with ``overwrite``) only if it holds
    nothing but ``names`` (its Zarr stores marked ``kind`` too), the marker and what killed
    runs left: replacing it must not delete anything the command did not write.
    """
    path = Path(path)
    earlier = check_output(path, kind=kind, overwrite=overwrite, what=what)
    if earlier:
        foreign = sorted(
            p.name
            for p in path.iterdir()
            if not (p.name == MARKER_FILE or _is_leftover(p.name) or p.name in names)
            or (p.name in names and p.is_dir() and product_of(p) != kind)
        )
        if foreign:
            raise OutputExistsError(
                f"{what} {path} is an earlier corrdiff-xr '{kind}' output but also holds "
                f"{', '.join(foreign)}, which it did not write; refusing to replace it (move "
                "those away or choose another directory)"
            )
    return earlier


@contextlib.contextmanager
def output_directory(
    path: str | os.PathLike,
    *,
    kind: str,
    names: Sequence[str],
    overwrite: bool = False,
    what: str = "output directory",
) -> Iterator[Path]:
    """Yield a hidden folder in the ``kind`` output directory ``path`` to build ``names`` in.

    ``path`` may be new, empty, or an earlier ``kind`` output as
    :func:`check_output_directory` allows; anything else is refused before anything is
    written. On success the entries built replace the old ones together
    (:func:`~corrdiff_xr._atomic.atomic_contents`); on failure an earlier output is
    untouched, and a directory that held none is left as it was found.
    """
    path = Path(path)
    earlier = check_output_directory(path, kind=kind, names=names, overwrite=overwrite, what=what)
    created = not os.path.lexists(path)
    path.mkdir(parents=True, exist_ok=True)
    if earlier:
        remove_stale(path)
    else:
        mark_directory(path, kind)
    try:
        with atomic_contents(path, names) as staged:
            yield staged
    except BaseException:
        if not earlier:  # leave the empty directory (or nothing) that was there
            remove(path / MARKER_FILE)
            if created:
                with contextlib.suppress(OSError):
                    path.rmdir()
        raise


#: what to do about the OS errors a write meets most often
_REMEDY = {
    errno.ENOSPC: "free space on that disk or choose another path",
    errno.EDQUOT: "free space within your quota or choose another path",
    errno.EFBIG: "the file-size limit (ulimit -f) is too small; raise it or write elsewhere",
    errno.EROFS: "the file system is read-only; choose a writable path",
    errno.EACCES: "choose a path you may write to",
    errno.EPERM: "the path may not be changed (permissions or immutable); choose another",
    errno.ENOTDIR: "a parent of the path is a file, not a directory; choose another path",
    errno.EEXIST: "something is in the way, e.g. a parent that is a file; choose another path",
    errno.ENAMETOOLONG: "choose a shorter path",
}


@contextlib.contextmanager
def writing(target: str | os.PathLike, *, what: str = "output") -> Iterator[None]:
    """Re-raise an OS error met while writing ``target`` as one naming it and the remedy.

    The writes inside are expected to be atomic (:mod:`corrdiff_xr._atomic`), so the message
    says that nothing was written. The new error has the original's type and ``errno``.
    """
    try:
        yield
    except OSError as err:
        if isinstance(err, CorrDiffError) or getattr(err, "names_output", False):
            raise  # a user error, or already named by an inner writing()
        reason = err.strerror or str(err) or type(err).__name__
        culprit = os.fspath(err.filename) if err.filename is not None else ""
        # name the file that failed unless it is the target or inside its hidden temporary
        staged = any(_is_leftover(part) for part in Path(culprit).parts)
        shown = culprit and not staged and culprit != os.fspath(target)
        detail = f" at {culprit}" if shown else ""
        remedy = _REMEDY.get(err.errno or 0)
        text = (
            f"could not write {what} {os.fspath(target)}: {reason}{detail}; nothing was "
            f"written{f' ({remedy})' if remedy else ''}"
        )
        # the builtin type (PermissionError, ...): library subclasses may format their own args
        builtin = next(c for c in type(err).__mro__ if c.__module__ == "builtins")
        new = builtin(text)
        new.errno, new.names_output = err.errno, True
        raise new from err


def local_output(path: str | os.PathLike, *, option: str) -> Path:
    """``path`` as a local Path; a URL (``s3://...``) is refused: outputs are written locally."""
    text = os.fspath(path)
    if "://" in text:
        raise OutputPathError(
            f"{option} {text!r} is a URL; this output is written to a local path only "
            "(write it locally, then copy it)"
        )
    return Path(text).expanduser()
