"""One writer per output: a lock file beside the output, held with ``fcntl.flock``.

:func:`output_lock` guards everything a command writes at one path (a Zarr store and its
records, a NetCDF file, a checkpoint, a JSON table): a second run that wants the same path
fails at once with :class:`OutputLockedError`, which names the holder (host, pid, start time,
command). The lock is the hidden sibling file ``.<name>.lock``; the kernel releases a flock
when its holder dies, so a lock file left by a killed run is simply taken over, with a
warning naming the run that left it. Only while holding the lock may a run remove the hidden
temporaries of the same path (:func:`corrdiff_xr._atomic.remove_leftovers`): no other live
run can be writing them.

A process may take the same lock again (nested commands and library calls): it counts.

Limits: outputs are local paths (commands refuse URLs for outputs), so the lock is always a
local file. On a network file system the lock is as good as its ``flock`` support (NFSv4 and
Lustre with ``flock`` mount option honour it across hosts; others may lock per host only).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from corrdiff_xr.errors import CorrDiffError

__all__ = ["OutputLockedError", "lock_path", "output_lock"]

# (lock file, pid) -> [descriptor, depth] of the locks this process holds (the pid: a forked
# child does not hold its parent's locks)
_HELD: dict[tuple[str, int], list[int]] = {}


class OutputLockedError(CorrDiffError, BlockingIOError):
    """Another live run is writing the same output."""


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file of ``target``: ``.<name>.lock`` in the same directory."""
    target = Path(target).expanduser().absolute()
    return target.with_name(f".{target.name}.lock")


def _holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        return json.loads(os.read(fd, 1 << 16) or b"{}")
    except ValueError:
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "a run that is starting"
    command = holder.get("command", "?")
    return (
        f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
        f"{holder.get('started', '?')}, command: {command}"
    )


def _acquire(path: Path, what: str) -> int:
    """Open and flock ``path``; the descriptor. Retries when a releasing run unlinked it."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # another run removed the folder it made: make it again
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise OutputLockedError(
                    f"lock file {path} of {what} is a symbolic link; refusing to use it "
                    "(remove the link)"
                ) from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputLockedError(
                f"{what} is being written by another run ({_describe(holder)}); wait for it "
                f"to finish or stop it (lock file {path})"
            ) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder released (unlinked) it between our open and flock


@contextlib.contextmanager
def output_lock(target: str | os.PathLike, *, what: str | None = None) -> Iterator[Path]:
    """Hold the lock of ``target`` for the block; yields the lock file's path.

    Raises
    ------
    OutputLockedError
        Another live process holds it (the message names host, pid, start time, command).
    """
    path = lock_path(target)
    key = (str(path), os.getpid())
    if key in _HELD:  # this process holds it already
        _HELD[key][1] += 1
        try:
            yield path
        finally:
            _HELD[key][1] -= 1
        return
    # folders made for the lock are removed with it unless the run wrote into them
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()][::-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, what or str(target))
    previous = _holder(fd)
    if previous:
        warnings.warn(
            f"taking over the lock of {what or target} left by a run that is gone "
            f"({_describe(previous)}); its partial output is cleaned up or resumed",
            stacklevel=3,
        )
    me = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])[:500],
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    _HELD[key] = [fd, 1]
    try:
        yield path
    finally:
        del _HELD[key]
        # unlink before unlocking: a waiter that opened this file sees it is gone and retries
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()
