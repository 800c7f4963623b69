"""The Dask graph of a downscaling: one task per output block, built key by key.

Each block task depends directly on the input chunks its halo overlaps and assembles the halo
itself, so building the graph costs a few dictionary entries per block (no per-block dask
collections, whose construction would dominate for thousands of blocks) and the graph size
does not depend on the model (tasks carry a small token, see ``cache``). With a whole-domain
regression mean (``task.whole_mean``), one more task per time chunk computes it from the
whole grid's inputs, and each block depends on a slice of it over its halo.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import operator
from collections.abc import Sequence

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from corrdiff_xr.data.times import to_ns
from corrdiff_xr.dims import TIME, X, Y
from corrdiff_xr.inference.block import (
    BlockPlan,
    BlockTask,
    compute_block,
    compute_mean_field,
)

__all__ = ["block_arrays"]

Part = tuple[tuple[int, ...], tuple[slice, ...], tuple[slice, ...]]


def _overlaps(chunks: Sequence[int], lo: int, hi: int) -> list[tuple[int, slice, slice]]:
    """Chunks of one axis overlapping [lo, hi): (chunk index, slice in chunk, slice in out)."""
    bounds = np.cumsum((0, *chunks))
    out = []
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        s, e = max(a, lo), min(b, hi)
        if s < e:
            out.append((i, slice(int(s - a), int(e - a)), slice(int(s - lo), int(e - lo))))
    return out


def _parts(chunks: tuple[tuple[int, ...], ...], region: Sequence[tuple[int, int]]) -> list[Part]:
    """Input chunks (and where each lands) that make up ``region`` of a chunked array."""
    per_axis = [_overlaps(c, lo, hi) for c, (lo, hi) in zip(chunks, region)]
    return [
        (tuple(p[0] for p in combo), tuple(p[1] for p in combo), tuple(p[2] for p in combo))
        for combo in itertools.product(*per_axis)
    ]


def _assemble(pieces: list[np.ndarray], layout: list[Part], shape: tuple[int, ...]) -> np.ndarray:
    if len(pieces) == 1 and pieces[0].shape == shape:
        return pieces[0]
    out = np.empty(shape, dtype=pieces[0].dtype)
    for piece, (_, src, dst) in zip(pieces, layout):
        out[dst] = piece[src]
    return out


def _halo(pieces: list[list[np.ndarray]], names, dims, layouts, shapes) -> xr.Dataset:
    """The Dataset of a region, assembled from its input chunks."""
    return xr.Dataset(
        {
            n: (d, _assemble(p, lay, shp))
            for n, d, p, lay, shp in zip(names, dims, pieces, layouts, shapes)
        }
    )


def _run(pieces, mean_field=None, *, inputs: dict, task: BlockTask) -> dict:
    """Task body of a block: assemble its halo, then compute the block."""
    return compute_block(_halo(pieces, **inputs), task, mean_field)


def _run_mean(pieces, *, inputs: dict, task: BlockTask) -> np.ndarray:
    """Task body of a time chunk's whole-domain regression mean."""
    return compute_mean_field(_halo(pieces, **inputs), task)


def _region_inputs(arrays, dims, extent: dict) -> tuple[list, dict]:
    """Input keys of a (time, y, x) region and how to assemble them (``_halo``'s keywords)."""
    keys, layouts, shapes = [], [], []
    for arr, d in zip(arrays, dims):
        region = [extent[k] for k in d]
        parts = _parts(arr.chunks, region)
        keys.append([(arr.name, *p[0]) for p in parts])
        layouts.append(parts)
        shapes.append(tuple(hi - lo for lo, hi in region))
    return keys, {"dims": dims, "layouts": layouts, "shapes": shapes}


def _mean_layer(src, arrays, dims, tbounds, times, task: BlockTask, token: str) -> tuple:
    """Whole-domain mean tasks, one per time chunk: (layer name, layer)."""
    names = list(src.data_vars)
    name = f"corrdiff-mean-field-{token}"
    whole = {Y: (0, src.sizes[Y]), X: (0, src.sizes[X])}
    layer = {}
    for it, (t0, t1) in enumerate(tbounds):
        keys, how = _region_inputs(arrays, dims, {TIME: (int(t0), int(t1)), **whole})
        fn = functools.partial(
            _run_mean,
            inputs={"names": names, **how},
            task=dataclasses.replace(task, times=tuple(int(t) for t in times[t0:t1])),
        )
        layer[(name, it)] = (fn, keys)
    return name, layer


def block_arrays(
    src: xr.Dataset,
    plans: list[list[BlockPlan]],
    tch: Sequence[int],
    mch: Sequence[int],
    n_out: int,
    task: BlockTask,
) -> dict[str, da.Array]:
    """Channel-first dask arrays of a downscaling, one task per (members, times, block).

    ``task`` holds the request's settings (its ``plan``, ``times`` and ``members`` are filled
    in per block, :meth:`BlockTask.at`); one array per ``task.kinds``: ``"sample"`` is
    ``(C, member, time, y, x)`` and ``"mean"`` ``(C, time, y, x)``.
    """
    kinds = task.kinds
    names = list(src.data_vars)
    arrays = [src[n].data for n in names]
    dims = [src[n].dims for n in names]
    times = to_ns(src[TIME].values)  # the noise key: ns in the axis' own calendar
    tbounds = list(itertools.pairwise(np.cumsum((0, *tch))))
    mbounds = list(itertools.pairwise(np.cumsum((0, *mch)))) if "sample" in kinds else [(0, 0)]
    token = tokenize([a.name for a in arrays], plans, tuple(tch), tuple(mch), n_out, task)
    name = f"corrdiff-block-{token}"
    layer: dict = {}
    mean_layer: dict = {}
    if task.whole_mean:
        mname, mean_layer = _mean_layer(src, arrays, dims, tbounds, times, task, token)
    for (g, (m0, m1)), (it, (t0, t1)), (iy, prow) in itertools.product(
        enumerate(mbounds), enumerate(tbounds), enumerate(plans)
    ):
        for ix, plan in enumerate(prow):
            extent = {TIME: (int(t0), int(t1)), Y: plan.halo_rows, X: plan.halo_cols}
            keys, how = _region_inputs(arrays, dims, extent)
            fn = functools.partial(
                _run,
                inputs={"names": names, **how},
                task=task.at(plan, times[t0:t1], range(m0, m1)),
            )
            deps = [keys]
            if task.whole_mean:  # the mean field over the block's halo, cut where it lies
                cut = (f"{mname}-cut", it, iy, ix)
                where = (slice(None), slice(None), slice(*plan.halo_rows), slice(*plan.halo_cols))
                mean_layer[cut] = (operator.getitem, (mname, it), where)
                deps.append(cut)
            layer[(name, g, it, iy, ix)] = (fn, *deps)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=arrays)
    if task.whole_mean:
        inputs = graph.dependencies[name]
        graph = HighLevelGraph(
            {**graph.layers, mname: mean_layer},
            {**graph.dependencies, mname: set(inputs), name: {*inputs, mname}},
        )
    ych = tuple(p[0].rows[1] - p[0].rows[0] for p in plans)
    xch = tuple(p.cols[1] - p.cols[0] for p in plans[0])
    out = {}
    for kind in kinds:
        oname = f"corrdiff-{kind}-{token}"
        if kind == "sample":
            sub = {
                (oname, 0, g, it, iy, ix): (operator.getitem, k, kind)
                for k in layer
                for (_, g, it, iy, ix) in [k]
            }
            chunks = ((n_out,), tuple(mch), tuple(tch), ych, xch)
        else:
            sub = {
                (oname, 0, it, iy, ix): (operator.getitem, k, kind)
                for k in layer
                for (_, g, it, iy, ix) in [k]
                if g == 0
            }
            chunks = ((n_out,), tuple(tch), ych, xch)
        hlg = HighLevelGraph(
            {**graph.layers, oname: sub},
            {**graph.dependencies, oname: {name}},
        )
        out[kind] = da.Array(
            hlg,
            oname,
            chunks,
            dtype=np.float32,
            meta=np.empty((0,) * len(chunks), dtype=np.float32),
        )
    return out
