"""The Dask graph of a downscaling: one task per output block, built key by key.

Each block task depends directly on the input chunks its halo overlaps and assembles the halo
itself, so building the graph costs a few dictionary entries per block (no per-block dask
collections, whose construction would dominate for thousands of blocks) and the graph size
does not depend on the model (tasks carry a small token, see ``cache``). With a whole-domain
regression mean (``task.whole_mean``), one more task per time chunk computes it from the
whole grid's inputs, and each block depends on a slice of it over its halo.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import itertools
import operator
from collections.abc import Sequence
from typing import Any, cast

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from dask.typing import Key

from corrdiff_xr._constraints import MAX_BLOCK_BYTES, MAX_BLOCKS, SettingError
from corrdiff_xr.data.times import to_ns
from corrdiff_xr.dims import TIME, X, Y
from corrdiff_xr.inference._submit import paused_gc
from corrdiff_xr.inference.block import (
    BlockPlan,
    BlockTask,
    compute_block,
    compute_mean_field,
)

__all__ = ["block_arrays", "check_size"]

#: one input chunk of a region: (chunk index, slices in the chunk, slices in the region)
Part = tuple[tuple[int, ...], tuple[slice, ...], tuple[slice, ...]]
#: a region's extent: ``{dim: (start, stop)}``
Extent = dict[str, tuple[int, int]]
#: how a region is assembled from its chunks: ``_halo``'s keywords (dims, layouts, shapes)
Assembly = dict[str, list[Any]]
#: a dask task: (callable, argument, ...)
Task = tuple[Any, ...]
#: a block task's key: (name, member group, time chunk, y block, x block)
BlockKey = tuple[str, int, int, int, int]


def check_size(
    *,
    members: tuple[int, int] | None,
    times: tuple[int, int],
    ych: Sequence[int],
    xch: Sequence[int],
    channels: int,
    whole_mean: bool,
) -> None:
    """Refuse a downscaling whose graph or blocks would not fit, before anything is built.

    ``members`` and ``times`` are ``(count, chunk size)`` (``members`` None without
    samples); the counts come from the sizes alone, so refusing 10**12 blocks costs nothing.
    The graph holds at most :data:`~corrdiff_xr._constraints.MAX_BLOCKS` block tasks and a
    block (or a time chunk's whole-domain mean) at most ``MAX_BLOCK_BYTES`` of float32.

    Raises
    ------
    SettingError
        Naming the member and time chunking (``members``, ``chunks['member']``,
        ``chunks['time']``), what they make and the limit.
    """
    (n, mc), (nt, tc) = members or (1, 1), times
    groups, steps, spatial = -(-n // mc), -(-nt // tc), len(ych) * len(xch)
    blocks = groups * steps * spatial
    keys = ((("members", n), ("chunks['member']", mc)) if members else ()) + (
        ("chunks['time']", tc),
    )
    if blocks > MAX_BLOCKS:
        raise SettingError(
            keys,
            f"make {blocks} block tasks ({groups} member chunks x {steps} time chunks x "
            f"{spatial} spatial blocks), more than the {MAX_BLOCKS} one graph may hold "
            "(MAX_BLOCKS); ask for larger member or time chunks, or fewer members or times",
        )
    m, t = min(n, mc), min(nt, tc)
    what, fields, (h, w) = f"a block of {m} members x {t} times x", m * t, (max(ych), max(xch))
    if whole_mean and t * sum(ych) * sum(xch) > fields * h * w:  # the mean task holds more
        what, fields, (h, w) = f"a time chunk's mean of {t} times x", t, (sum(ych), sum(xch))
    nbytes = fields * channels * h * w * 4
    if nbytes > MAX_BLOCK_BYTES:
        raise SettingError(
            keys,
            f"make {what} {channels} targets x {h} x {w} pixels in float32, "
            f"{nbytes / 2**30:.3g} GiB, more than the "
            f"{MAX_BLOCK_BYTES / 2**30:g} GiB one task may hold (MAX_BLOCK_BYTES); ask for "
            "smaller member, time or y/x chunks",
        )


class _Axis:
    """One chunked axis: the chunks overlapping a range, found by bisection of the boundaries.

    A block needs the few input chunks its halo overlaps; scanning every chunk per block would
    make the graph quadratic in the number of time chunks (10**5 time steps: hours).
    """

    def __init__(self, chunks: Sequence[int]):
        self.bounds = list(itertools.accumulate(chunks, initial=0))
        # y, x ranges repeat for every time
        self._found: dict[tuple[int, int], list[tuple[int, slice, slice]]] = {}

    def overlaps(self, lo: int, hi: int) -> list[tuple[int, slice, slice]]:
        """Chunks overlapping [lo, hi): (chunk index, slice in chunk, slice in out)."""
        if (lo, hi) in self._found:
            return self._found[lo, hi]
        b = self.bounds
        i = max(bisect.bisect_right(b, lo) - 1, 0)
        out: list[tuple[int, slice, slice]] = []
        while i < len(b) - 1 and b[i] < hi:
            s, e = max(b[i], lo), min(b[i + 1], hi)
            if s < e:
                out.append((i, slice(s - b[i], e - b[i]), slice(s - lo, e - lo)))
            i += 1
        self._found[lo, hi] = out
        return out


#: a group's parts of a region and the region's shape
_Parts = tuple[list[Part], tuple[int, ...]]


class _Inputs:
    """The input arrays of a downscaling, and which of their chunks make up a region.

    Arrays with the same dims and chunks form a group (the regridded inputs; the static
    fields): a region's parts are found once per group, and a group without time (static
    fields) finds them once per spatial block, not once per block.
    """

    def __init__(self, arrays: Sequence[da.Array], dims: Sequence[tuple[str, ...]]):
        self.names, self.dims = [a.name for a in arrays], list(dims)
        axes: dict[tuple[int, ...], _Axis] = {}  # each chunking hashed once, not per block
        groups: dict[tuple[tuple[str, ...], tuple[tuple[int, ...], ...]], int] = {}
        self.group = [groups.setdefault((d, a.chunks), len(groups)) for a, d in zip(arrays, dims)]
        self.groups = [(d, tuple(axes.setdefault(c, _Axis(c)) for c in ch)) for d, ch in groups]
        self._parts: dict[tuple[int, tuple[tuple[int, int], ...]], _Parts] = {}

    def _group_parts(self, g: int, extent: Extent) -> _Parts:
        dims, axes = self.groups[g]
        region = tuple(extent[k] for k in dims)
        key = (g, region)
        if key not in self._parts:
            per_axis = [ax.overlaps(lo, hi) for ax, (lo, hi) in zip(axes, region)]
            parts: list[Part] = [tuple(zip(*combo)) for combo in itertools.product(*per_axis)]
            self._parts[key] = parts, tuple(hi - lo for lo, hi in region)
        return self._parts[key]

    def region(self, extent: Extent) -> tuple[list[list[Key]], Assembly]:
        """Input keys of a (time, y, x) region and how to assemble them (``_halo``'s keywords)."""
        found = [self._group_parts(g, extent) for g in range(len(self.groups))]
        keys: list[list[Key]] = []
        layouts: list[list[Part]] = []
        shapes: list[tuple[int, ...]] = []
        for name, g in zip(self.names, self.group):
            parts, shape = found[g]
            keys.append([(name, *p[0]) for p in parts])
            layouts.append(parts)
            shapes.append(shape)
        return keys, {"dims": self.dims, "layouts": layouts, "shapes": shapes}


def _assemble(pieces: list[np.ndarray], layout: list[Part], shape: tuple[int, ...]) -> np.ndarray:
    if len(pieces) == 1 and pieces[0].shape == shape:
        return pieces[0]
    out = np.empty(shape, dtype=pieces[0].dtype)
    for piece, (_, src, dst) in zip(pieces, layout):
        out[dst] = piece[src]
    return out


def _halo(
    pieces: list[list[np.ndarray]],
    names: list[str],
    dims: list[tuple[str, ...]],
    layouts: list[list[Part]],
    shapes: list[tuple[int, ...]],
) -> xr.Dataset:
    """The Dataset of a region, assembled from its input chunks."""
    return xr.Dataset(
        {
            n: (d, _assemble(p, lay, shp))
            for n, d, p, lay, shp in zip(names, dims, pieces, layouts, shapes)
        }
    )


def _run(
    pieces: list[list[np.ndarray]],
    mean_field: np.ndarray | None = None,
    *,
    inputs: Assembly,
    task: BlockTask,
) -> dict[str, np.ndarray]:
    """Task body of a block: assemble its halo, then compute the block."""
    return compute_block(_halo(pieces, **inputs), task, mean_field)


def _run_mean(pieces: list[list[np.ndarray]], *, inputs: Assembly, task: BlockTask) -> np.ndarray:
    """Task body of a time chunk's whole-domain regression mean."""
    return compute_mean_field(_halo(pieces, **inputs), task)


def _mean_layer(
    src: xr.Dataset,
    inputs: _Inputs,
    tbounds: list[tuple[int, int]],
    times: np.ndarray,
    task: BlockTask,
    token: str,
) -> tuple[str, dict[Key, Task]]:
    """Whole-domain mean tasks, one per time chunk: (layer name, layer)."""
    names = [str(n) for n in src.data_vars]
    name = f"corrdiff-mean-field-{token}"
    whole = {Y: (0, src.sizes[Y]), X: (0, src.sizes[X])}
    layer: dict[Key, Task] = {}
    for it, (t0, t1) in enumerate(tbounds):
        keys, how = inputs.region({TIME: (t0, t1), **whole})
        fn = functools.partial(
            _run_mean,
            inputs={"names": names, **how},
            task=dataclasses.replace(task, times=tuple(times[t0:t1].tolist())),
        )
        layer[(name, it)] = (fn, keys)
    return name, layer


@paused_gc()  # 10**5 blocks: collections walking the new tasks cost more than building them
def block_arrays(
    src: xr.Dataset,
    plans: list[list[BlockPlan]],
    tch: Sequence[int],
    mch: Sequence[int],
    n_out: int,
    task: BlockTask,
) -> dict[str, list[da.Array]]:
    """Dask arrays of a downscaling, one task per (members, times, block).

    ``task`` holds the request's settings (its ``plan``, ``times`` and ``members`` are filled
    in per block, :meth:`BlockTask.at`); for each of ``task.kinds``, one array per output
    channel: ``"sample"`` ``(member, time, y, x)``, ``"mean"`` ``(time, y, x)``.
    """
    kinds = task.kinds
    names = [str(n) for n in src.data_vars]
    arrays = [src[n].data for n in names]
    dims = [tuple(str(d) for d in src[n].dims) for n in names]
    times = to_ns(src[TIME].values)  # the noise key: ns in the axis' own calendar
    tbounds = list(itertools.pairwise(itertools.accumulate(tch, initial=0)))
    mbounds = list(itertools.pairwise(itertools.accumulate(mch, initial=0)))
    mbounds = mbounds if "sample" in kinds else [(0, 0)]
    inputs = _Inputs(arrays, dims)
    token = tokenize([a.name for a in arrays], plans, tuple(tch), tuple(mch), n_out, task)
    name = f"corrdiff-block-{token}"
    layer: dict[BlockKey, Task] = {}
    mean_layer: dict[Key, Task] = {}
    mname = ""
    if task.whole_mean:
        mname, mean_layer = _mean_layer(src, inputs, tbounds, times, task, token)
    for (g, (m0, m1)), (it, (t0, t1)), (iy, prow) in itertools.product(
        enumerate(mbounds), enumerate(tbounds), enumerate(plans)
    ):
        for ix, plan in enumerate(prow):
            extent = {TIME: (t0, t1), Y: plan.halo_rows, X: plan.halo_cols}
            keys, how = inputs.region(extent)
            fn = functools.partial(
                _run,
                inputs={"names": names, **how},
                task=task.at(plan, times[t0:t1], range(m0, m1)),
            )
            deps: list[Any] = [keys]
            if task.whole_mean:  # the mean field over the block's halo, cut where it lies
                cut = (f"{mname}-cut", it, iy, ix)
                where = (slice(None), slice(None), slice(*plan.halo_rows), slice(*plan.halo_cols))
                mean_layer[cut] = (operator.getitem, (mname, it), where)
                deps.append(cut)
            layer[(name, g, it, iy, ix)] = (fn, *deps)
    # the keys are Keys: the cast only widens the dict's declared key type
    graph = HighLevelGraph.from_collections(
        name, cast("dict[Key, Task]", layer), dependencies=arrays
    )
    if task.whole_mean:
        found = graph.dependencies[name]
        graph = HighLevelGraph(
            {**graph.layers, mname: mean_layer},
            {**graph.dependencies, mname: set(found), name: {*found, mname}},
        )
    ych = tuple(p[0].rows[1] - p[0].rows[0] for p in plans)
    xch = tuple(p.cols[1] - p.cols[0] for p in plans[0])
    return {
        kind: [
            _channel(graph, name, layer, kind, c, (tuple(mch), tuple(tch), ych, xch), token)
            for c in range(n_out)
        ]
        for kind in kinds
    }


def _take(result: dict[str, np.ndarray], kind: str, c: int) -> np.ndarray:
    return result[kind][c]


def _channel(
    graph: HighLevelGraph,
    name: str,
    layer: dict[BlockKey, Task],
    kind: str,
    c: int,
    chunks: tuple[tuple[int, ...], ...],
    token: str,
) -> da.Array:
    """Channel ``c`` of the blocks' ``kind`` output, one task per block (built directly: a
    dask slice of a channel-first array would add a task per block and cost seconds)."""
    oname = f"corrdiff-{kind}-{c}-{token}"
    sub: dict[Key, Task]
    if kind == "sample":
        sub = {(oname, *k[1:]): (_take, k, kind, c) for k in layer}
    else:  # the mean does not depend on the members: the first member group's blocks
        sub = {(oname, *k[2:]): (_take, k, kind, c) for k in layer if k[1] == 0}
        chunks = chunks[1:]
    hlg = HighLevelGraph({**graph.layers, oname: sub}, {**graph.dependencies, oname: {name}})
    meta = np.empty((0,) * len(chunks), dtype=np.float32)
    return da.Array(hlg, oname, chunks, dtype=np.float32, meta=meta)
