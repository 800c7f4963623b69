"""Atomic writes: build the new file or directory at a hidden sibling path, then rename it in.

Readers see the old content or the new, never a half-written one; a failure or an interrupt
leaves the target as it was and removes the partial copy. The one mechanism behind model
files, checkpoints, Zarr stores and their statistics, NetCDF files, figures and JSON.
:func:`atomic_contents` does the same for several entries of a directory that must stay where
it is (an output folder that may be the user's working directory): they are built in a hidden
folder inside it and renamed into place together once all are complete.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = [
    "TargetExistsError",
    "atomic_contents",
    "atomic_path",
    "discard",
    "remove",
    "remove_leftovers",
    "remove_stale",
    "write_bytes",
]


class TargetExistsError(FileExistsError):
    """``atomic_path(..., replace=False)`` found its target taken when moving in."""


def _sibling(target: Path, tag: str) -> Path:
    return target.with_name(f".{target.name}.{tag}-{uuid.uuid4().hex[:8]}")


def remove(path: Path) -> None:
    """Delete a file or directory tree if it exists.

    A failed parallel write (dask threads) can still be finishing chunk writes into the tree
    as it is removed, so a tree is removed again until it is gone (for up to ~2 s).
    """
    for _ in range(40):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        if not os.path.lexists(path):
            return
        time.sleep(0.05)


def discard(path: Path) -> None:
    """Delete ``path`` so that no reader ever sees it half-deleted: rename it away first."""
    old = _sibling(path, "old")
    os.replace(path, old)
    remove(old)


def remove_stale(directory: str | os.PathLike) -> None:
    """Remove what killed writers left in ``directory`` (partial copies, set-aside old ones)."""
    for pattern in (".*.tmp-*", ".*.old-*"):
        for stale in Path(directory).glob(pattern):
            remove(stale)


def remove_leftovers(target: str | os.PathLike) -> None:
    """Remove the hidden partial copies (and set-aside old ones) killed writers of ``target`` left.

    Call it only while holding ``target``'s :func:`corrdiff_xr._lock.output_lock`: then no
    live run is writing them.
    """
    target = Path(target)
    for tag in ("tmp", "old"):
        for stale in target.parent.glob(f".{glob.escape(target.name)}.{tag}-*"):
            remove(stale)


def _fsync_tree(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def _move_in(staged: Path, target: Path, *, replace: bool = True) -> None:
    if not replace:
        _move_in_if_absent(staged, target)
    elif staged.is_dir() and target.exists():
        # a directory cannot be renamed over a non-empty one: set the old aside, then drop it
        old = _sibling(target, "old")
        os.replace(target, old)
        try:
            os.replace(staged, target)
        except BaseException:
            os.replace(old, target)
            raise
        remove(old)
    else:
        os.replace(staged, target)


def _move_in_if_absent(staged: Path, target: Path) -> None:
    """Rename ``staged`` to ``target`` only if nothing (at most an empty directory) is there."""
    if staged.is_dir():
        if os.path.islink(target) or os.path.isfile(target):
            raise TargetExistsError(errno.EEXIST, "exists; not replaced", str(target))
        try:  # rename(2) replaces an empty directory only: a non-empty one fails
            os.rename(staged, target)
        except OSError as err:
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise TargetExistsError(errno.EEXIST, "exists; not replaced", str(target)) from None
            raise
        return
    try:  # link(2) fails with EEXIST, even for a dangling link, where rename would replace it
        os.link(staged, target)
    except FileExistsError:
        raise TargetExistsError(errno.EEXIST, "exists; not replaced", str(target)) from None
    os.unlink(staged)


@contextlib.contextmanager
def atomic_path(
    target: str | os.PathLike, *, fsync: bool = False, replace: bool = True
) -> Iterator[Path]:
    """Yield a hidden sibling path to write to; it replaces ``target`` when the block succeeds.

    Whatever is written at the yielded path (a file or a directory, e.g. a Zarr store) is
    renamed onto ``target`` on success and removed on any exception. ``fsync`` flushes it
    to disk first, so a power cut cannot leave a renamed but empty file. ``replace=False``
    moves it in only if ``target`` is absent (or an empty directory) at that moment, else
    :class:`TargetExistsError`: what appeared meanwhile (another run's result, a link) stays.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = _sibling(target, "tmp")
    try:
        yield staged
        if fsync:
            _fsync_tree(staged)
        _move_in(staged, target, replace=replace)
    finally:
        remove(staged)


@contextlib.contextmanager
def atomic_contents(directory: str | os.PathLike, names: Iterable[str]) -> Iterator[Path]:
    """Yield a hidden folder inside ``directory`` to build its entries ``names`` in.

    When the block succeeds, every entry built there replaces the entry of that name in
    ``directory`` (one rename each) and those of ``names`` not built are removed (e.g. the
    figures of an earlier run that drew more); on any exception ``directory`` is unchanged.
    """
    directory = Path(directory)
    names = set(names)
    staged = _sibling(directory / "contents", "tmp")
    staged.mkdir()
    try:
        yield staged
        built = {p.name for p in staged.iterdir()}
        if built - names:
            raise ValueError(f"built {sorted(built - names)}, expected only {sorted(names)}")
        for name in sorted(names):
            if name in built:
                _move_in(staged / name, directory / name)
            else:
                remove(directory / name)
    finally:
        remove(staged)


def write_bytes(target: str | os.PathLike, data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target, fsync=fsync) as staged:
        staged.write_bytes(data)
    return Path(target)
