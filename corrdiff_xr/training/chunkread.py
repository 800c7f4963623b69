"""Reading whole time-chunks of lazy arrays by running just their tasks.

The loader reads a block (one or more whole time-chunks) per step. Slicing the dask array
per block means building, optimising and ordering a new graph each time, which cost a third
of the read itself (``benchmarks/loader.py``). Instead each array's graph is materialised
once (:class:`Chunks`), and a block's chunks and the tasks they depend on are cut out of it
with a few dict look-ups (:func:`block_pieces`) and run together (:func:`run_pieces`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import dask.array as da
import dask.base
import dask.core
import dask.local
import dask.threaded
import numpy as np
import xarray as xr

from corrdiff_xr.dims import TIME

__all__ = ["Chunks", "Pieces", "arrays", "block_pieces", "run_pieces"]


def arrays(ds: xr.Dataset) -> dict[str, Data]:
    """``{name: data}``; dask arrays along time become :class:`Chunks`."""
    out: dict[str, Data] = {}
    for name, var in ds.data_vars.items():
        data = var.data
        if isinstance(data, da.Array) and var.dims and var.dims[0] == TIME:
            out[str(name)] = _chunks(data)
        else:
            out[str(name)] = data
    return out


@dataclasses.dataclass(frozen=True)
class Chunks:
    """A dask array with its low-level graph and chunk keys, materialised once."""

    array: da.Array
    graph: dict
    keys: np.ndarray  # object array of chunk keys, one per chunk
    starts: np.ndarray  # time offset of each time chunk, and the end


@dataclasses.dataclass(frozen=True)
class Pieces:
    """The chunk keys of one variable's block (time, y, x nested lists) and their tasks."""

    keys: list
    graph: dict

    def assemble(self, values: dict) -> np.ndarray:
        nested = self.keys
        while isinstance(nested, list) and len(nested) == 1:
            nested = nested[0]  # one chunk: no copy
        if not isinstance(nested, list):
            return np.asarray(values[nested])

        def fill(k: Any) -> Any:  # nested lists of chunk keys -> the same of arrays
            return [fill(i) for i in k] if isinstance(k, list) else values[k]

        return np.block(fill(self.keys))


#: what :func:`arrays` holds per variable: a graph along time, or the data as it is
Data = Chunks | da.Array | np.ndarray


def _chunks(data: da.Array) -> Chunks:
    keys = np.empty(data.numblocks, dtype=object)
    for index in np.ndindex(*data.numblocks):
        keys[index] = (data.name,) + index
    return Chunks(data, dict(data.__dask_graph__()), keys, np.cumsum((0,) + data.chunks[0]))


def block_pieces(data: Data, start: int, stop: int) -> Pieces | da.Array | np.ndarray:
    """Time steps ``start:stop`` of ``data``: :class:`Pieces` when they are whole chunks of a
    :class:`Chunks`, else a plain (lazy) slice."""
    if not isinstance(data, Chunks):
        return data[start:stop]
    i0, i1 = np.searchsorted(data.starts, [start, stop])
    if i1 >= len(data.starts) or data.starts[i0] != start or data.starts[i1] != stop:
        return data.array[start:stop]  # chunks not aligned with the block: slice instead
    keys = data.keys[i0:i1]
    graph, stack = {}, list(keys.ravel())
    while stack:  # the tasks these chunks depend on
        key = stack.pop()
        if key not in graph:
            graph[key] = data.graph[key]
            stack.extend(dask.core.get_dependencies(data.graph, key))
    return Pieces(keys.tolist(), graph)


def _flat(nested: Any) -> list:
    return [k for item in nested for k in _flat(item)] if isinstance(nested, list) else [nested]


def run_pieces(pieces: list[Pieces], scheduler: str | None) -> dict:
    """``{key: array}`` of all chunks of ``pieces``, on ``scheduler`` (default: dask's)."""
    if not pieces:
        return {}
    graph: dict = {}
    for piece in pieces:
        graph.update(piece.graph)
    keys = [k for piece in pieces for k in _flat(piece.keys)]
    get = dask.base.get_scheduler(scheduler=scheduler) or dask.threaded.get
    if get is dask.local.get_sync:
        get = dask.core.get  # no scheduler bookkeeping for a handful of reads
    return dict(zip(keys, get(graph, keys)))
