"""Run many independent tasks of one graph a window at a time, so the first results come soon.

One ``compute`` of 10**5 block tasks makes dask cull, convert and order the whole graph before
the first task runs (minutes). Culling the graph to a window of keys costs only that window
(the graph's key set is found once and cached), so windows of a few hundred keys run one after
another, in order. A distributed Client keeps two windows in flight, so its workers do not
wait while the next window is built.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import json
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import numpy as np
import xarray as xr
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from dask.typing import Key

from corrdiff_xr._atomic import write_bytes

if TYPE_CHECKING:
    from distributed import Client, Future

Item = TypeVar("Item")
#: a window's tasks: (layer, keys of the base graph they read, one key per item)
Tasks = tuple[dict[Key, Any], set[Key], list[Key]]
#: a block to write: (chunk index, region ``{dim: slice}``, completion-record name)
Todo = tuple[tuple[int, ...], dict[str, slice], str]


class SliceTasks(Protocol):
    """The input fingerprints' tasks (a :class:`~corrdiff_xr.inference.fingerprint.
    Fingerprints`; structural, so that this module does not import the one importing it)."""

    graph: HighLevelGraph

    def tasks(self, slices: list[tuple[int, int]]) -> Tasks:
        """(layer, keys of :attr:`graph` it reads, one key per slice; none when inactive)."""
        ...


__all__ = ["WINDOW", "paused_gc", "run_windows", "write_blocks"]

#: keys per window: large enough that per-window overhead (ms) is noise, small enough that
#: the first window's graph work is too
WINDOW = 256


def _gather(*values: object) -> list[object]:
    return list(values)


def _window(
    base: HighLevelGraph,
    layer: dict[Key, Any],
    needs: set[Key],
    outs: list[Key],
    name: str,
) -> Delayed:
    """A Delayed of the values of ``outs``: ``layer`` over ``base`` culled to its ``needs``."""
    sub = base.cull(needs) if needs else HighLevelGraph({}, {})
    layers: dict[str, Mapping[Key, Any]] = {
        **sub.layers,
        f"{name}-tasks": layer,
        name: {name: (_gather, *outs)},
    }
    deps = {**sub.dependencies, f"{name}-tasks": set(sub.layers), name: {f"{name}-tasks"}}
    return Delayed(name, HighLevelGraph(layers, deps))


def run_windows(
    base: HighLevelGraph,
    items: Sequence[Item],
    build: Callable[[list[Item]], Tasks],
    client: Client | None = None,
    *,
    name: str,
) -> list[Any]:
    """One value per item of ``items``, in order, computed :data:`WINDOW` items at a time.

    ``build(window)`` returns the window's tasks: (layer, keys of ``base`` they read, one key
    per item), so nothing is built for the windows not reached yet. ``client``: a
    dask.distributed Client, else the current dask scheduler. ``name`` prefixes the windows'
    keys (unique per run).
    """
    import dask

    out: list[Any] = []
    pending: deque[Future] = deque()
    for start in range(0, len(items), WINDOW):
        with paused_gc():
            task = _window(base, *build(list(items[start : start + WINDOW])), f"{name}-{start}")
        if client is None:
            out.extend(dask.compute(task)[0])
            continue
        pending.append(client.compute(task))
        if len(pending) > 1:
            out.extend(pending.popleft().result())
    while pending:
        out.extend(pending.popleft().result())
    return out


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection while a large graph is built.

    Building 10**5 tasks allocates millions of tuples that all live on; every collection
    would walk them again (more than half of graph construction's time at 10**5 steps).
    The collector is not frozen afterwards (``gc.freeze`` halves the time to the first block
    at 10**5 steps, 10.5 -> 5.9 s, but would keep a long session's cyclic garbage forever).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _write_block(
    values: list[np.ndarray],
    read: dict[str, str] | None = None,
    *,
    store: str,
    block: dict[str, slice],
    done: str,
    names: list[str],
    records: str,
) -> str:
    import zarr

    group = zarr.open_group(store, mode="r+")
    region = tuple(block.values())
    for name, data in zip(names, values):
        cast("zarr.Array", group[name])[region] = data
    record = json.dumps({"inputs": read}).encode() if read else b""
    write_bytes(Path(records) / done, record, fsync=False)
    return done


def write_blocks(
    ds: xr.Dataset,
    store: Path,
    records: Path,
    todo: list[Todo],
    fingerprints: SliceTasks,
    key: str,
    client: Client | None,
) -> int:
    """Compute and write the blocks ``todo`` ((chunk index, region, record name) each), in order.

    One write task per block, depending directly on that block's chunk of every variable
    (built key by key, a window at a time) and its input fingerprint (``fingerprints``, a
    :class:`~corrdiff_xr.inference.fingerprint.Fingerprints`); it writes the chunks, then the
    completion record into ``records``. How many were written.
    """
    from corrdiff_xr.dims import TIME

    names = [str(n) for n in ds.data_vars]
    arrays = [ds[n].data for n in names]
    wname = f"corrdiff-write-{key}"
    base = HighLevelGraph.merge(*(a.__dask_graph__() for a in arrays), fingerprints.graph)

    def build(window: list[Todo]) -> Tasks:
        slices = [(b[TIME].start, b[TIME].stop) for _, b, _ in window]
        layer, needs, reads = fingerprints.tasks(slices)
        for (idx, block, bid), read in itertools.zip_longest(window, reads):
            fn = functools.partial(
                _write_block,
                store=str(store),
                block=block,
                done=bid,
                names=names,
                records=str(records),
            )
            chunks = [(a.name, *idx) for a in arrays]
            layer[(wname, *idx)] = (fn, chunks, *([read] if read else []))
            needs.update(chunks)
        return layer, needs, [(wname, *idx) for idx, _, _ in window]

    run_windows(base, todo, build, client, name=f"corrdiff-written-{key}")
    return len(todo)
