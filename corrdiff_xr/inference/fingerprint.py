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

import functools
import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import is_dask_collection, tokenize
from dask.highlevelgraph import HighLevelGraph
from dask.typing import Key

from corrdiff_xr.dims import TIME
from corrdiff_xr.errors import CorrDiffError
from corrdiff_xr.inference._submit import Tasks, run_windows
from corrdiff_xr.inference.graph import Part, _assemble, _Inputs

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["Fingerprints", "InputChangedError", "changed_inputs", "input_fingerprints"]


class InputChangedError(CorrDiffError, ValueError):
    """The inputs of a store being resumed differ from those its written blocks read."""


def _digest(values: np.ndarray) -> str:
    values = np.ascontiguousarray(np.asarray(values))
    digest = hashlib.blake2b(digest_size=12)
    digest.update(f"{values.dtype.str}{values.shape}".encode())
    digest.update(values.tobytes() if values.dtype.kind != "O" else repr(values.tolist()).encode())
    return digest.hexdigest()


def _collect(
    timed: list[list[np.ndarray]],
    static: list[str],
    *,
    names: list[str],
    fixed: list[str],
    layouts: list[list[Part]],
    shapes: list[tuple[int, ...]],
) -> dict[str, str]:
    """Task body of one time slice: digest each variable's values there, add the static ones."""
    pieces = zip(names, timed, layouts, shapes)
    digests = {n: _digest(_assemble(p, lay, shp)) for n, p, lay, shp in pieces}
    return dict(sorted({**digests, **dict(zip(fixed, static))}.items()))


def _whole(pieces: list[np.ndarray], *, layout: list[Part], shape: tuple[int, ...]) -> str:
    return _digest(_assemble(pieces, layout, shape))


def _arrays(inputs: xr.Dataset, names: list[str]) -> list[da.Array]:
    # a variable held in memory becomes one chunk (its tasks then share it)
    variables = [inputs[n] for n in names]
    return [v.data if is_dask_collection(v.data) else v.chunk().data for v in variables]


def _dims(var: xr.DataArray) -> tuple[str, ...]:
    return tuple(str(d) for d in var.dims)


class Fingerprints:
    """Lazy ``{variable: digest}`` per time slice of the output's blocks, built when asked for.

    Variables with a ``time`` dimension are hashed at the slice's times (by position: the
    inputs' times are the output's); the others (static fields) whole. The tasks of a few
    slices are built key by key from the input chunks they overlap (:meth:`tasks`), so the
    cost is linear in the slices asked for (a dask slice per time and variable would cull the
    whole graph each time: quadratic in the times). ``inputs`` None: nothing is fingerprinted.
    """

    def __init__(self, inputs: xr.Dataset | None = None):
        self.active = inputs is not None
        inputs = inputs if inputs is not None else xr.Dataset()
        self.timed = [str(n) for n, v in inputs.data_vars.items() if TIME in v.dims]
        self.static = [str(n) for n, v in inputs.data_vars.items() if TIME not in v.dims]
        arrays = _arrays(inputs, self.timed + self.static)
        self.graph = HighLevelGraph.merge(*(a.__dask_graph__() for a in arrays))
        self.name = "corrdiff-inputs-" + tokenize([a.name for a in arrays])
        self._whole = {str(d): (0, int(n)) for d, n in inputs.sizes.items()}
        self._regions = _Inputs(arrays[: len(self.timed)], [_dims(inputs[n]) for n in self.timed])
        static = [
            _Inputs([a], [_dims(inputs[n])]) for n, a in zip(self.static, arrays[len(self.timed) :])
        ]
        # the static fields' tasks, the same for every slice
        self._fixed: dict[Key, tuple[Any, ...]] = {}
        for i, region in enumerate(static):
            keys, how = region.region(self._whole)
            fn = functools.partial(_whole, layout=how["layouts"][0], shape=how["shapes"][0])
            self._fixed[self.name, -1, i] = (fn, keys[0])

    def key(self, t0: int, t1: int) -> tuple[str, int, int] | None:
        """The key of the task of slice ``[t0, t1)`` (None when not active)."""
        return (self.name, t0, t1) if self.active else None

    def _key(self, t0: int, t1: int) -> tuple[str, int, int]:
        return (self.name, t0, t1)

    def tasks(self, slices: list[tuple[int, int]]) -> Tasks:
        """The tasks of ``slices``: (layer, input keys it reads, the slices' keys)."""
        if not self.active:
            return {}, set(), []
        layer: dict[Key, Any] = dict(self._fixed)
        needs: set[Key] = set()
        for t0, t1 in dict.fromkeys(slices):
            keys, how = self._regions.region({**self._whole, TIME: (t0, t1)})
            fn = functools.partial(
                _collect,
                names=self.timed,
                fixed=self.static,
                layouts=how["layouts"],
                shapes=how["shapes"],
            )
            layer[self._key(t0, t1)] = (fn, keys, list(self._fixed))
            needs.update(k for per_var in keys for k in per_var)
        for task in self._fixed.values():
            needs.update(task[1])
        return layer, needs, [self._key(*s) for s in slices]

    def compute(
        self, slices: list[tuple[int, int]], client: Client | None = None
    ) -> list[dict[str, str]]:
        """The fingerprints of ``slices``, in order (a window at a time)."""
        return run_windows(self.graph, slices, self.tasks, client, name=f"{self.name}-check")


def input_fingerprints(inputs: xr.Dataset) -> Fingerprints:
    """The fingerprints of what the output's blocks read from ``inputs`` (:class:`Fingerprints`)."""
    return Fingerprints(inputs)


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
