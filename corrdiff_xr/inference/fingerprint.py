"""Fingerprints of what each output block read, so that a resume never mixes two inputs.

A resumed write completes a store from blocks computed by different processes, possibly days
apart. If the input changed in between (a variable rewritten in place, the whole store
regenerated), the store would silently mix results of two inputs under one identity record.
So every completion record holds the blake2b digests of the inputs its block read: each
input variable's values at the block's times, and each static field whole. A resume first
recomputes the digests of the times already complete (reading the inputs once more: cheap
beside sampling) and refuses with :class:`InputChangedError` when any differs, naming the
variable and the times.

The digests hash values, not file metadata: a copied or re-saved input with equal values
resumes; any changed value is caught, whatever the source (Zarr, NetCDF, catalogs, URLs).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr
from dask.delayed import Delayed, delayed

from corrdiff_xr.dims import TIME
from corrdiff_xr.errors import CorrDiffError

__all__ = ["InputChangedError", "changed_inputs", "compute", "input_fingerprints"]


class InputChangedError(CorrDiffError, ValueError):
    """The inputs of a store being resumed differ from those its written blocks read."""


def _digest(values: Any) -> str:
    values = np.ascontiguousarray(np.asarray(values))
    digest = hashlib.blake2b(digest_size=12)
    digest.update(f"{values.dtype.str}{values.shape}".encode())
    digest.update(values.tobytes() if values.dtype.kind != "O" else repr(values.tolist()).encode())
    return digest.hexdigest()


def compute(tasks: list, client: Any = None) -> list:
    """Compute dask ``tasks`` on ``client`` (a dask.distributed Client) or the current scheduler."""
    import dask

    if client is not None:
        return client.gather(client.compute(tasks))
    return list(dask.compute(*tasks))


def _collect(**digests: str) -> dict[str, str]:
    return dict(sorted(digests.items()))


def input_fingerprints(inputs: xr.Dataset, times: list[slice]) -> dict[tuple[int, int], Delayed]:
    """One lazy ``{variable: digest}`` per time slice of the output's blocks.

    Variables with a ``time`` dimension are hashed at the slice's times (by position: the
    inputs' times are the output's); the others (static fields) whole, once for all slices.
    """
    static = {
        str(n): delayed(_digest, pure=True)(v.data)
        for n, v in inputs.data_vars.items()
        if TIME not in v.dims
    }
    out = {}
    for sl in times:
        timed = {
            str(n): delayed(_digest, pure=True)(v.isel({TIME: sl}).data)
            for n, v in inputs.data_vars.items()
            if TIME in v.dims
        }
        out[sl.start, sl.stop] = delayed(_collect, pure=True)(**timed, **static)
    return out


def changed_inputs(
    recorded: Mapping[tuple[int, int], Mapping[str, str]],
    current: Mapping[tuple[int, int], Mapping[str, str]],
    times: np.ndarray,
    *,
    what: str,
) -> InputChangedError | None:
    """The error to raise when a recorded fingerprint differs from the current one, else None."""
    changed: dict[str, list[int]] = {}
    for key, old in sorted(recorded.items()):
        new = current[key]
        for name in sorted(old.keys() | new.keys()):
            if old.get(name) != new.get(name):
                changed.setdefault(name, []).append(key[0])
    if not changed:
        return None
    name, starts = next(iter(changed.items()))
    when = ", ".join(str(times[i])[:19] for i in starts[:3]) + (" ..." if len(starts) > 3 else "")
    others = f" (and {', '.join(sorted(changed)[1:])})" if len(changed) > 1 else ""
    return InputChangedError(
        f"input variable {name!r}{others} changed since {what} was started: the blocks "
        f"written for time {when} read other values; pass --overwrite to start again from "
        "the input as it is now, or restore the input to resume"
    )
