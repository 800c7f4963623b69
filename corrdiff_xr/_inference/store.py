"""Resumable Zarr writes and the reference's NetCDF layout.

:func:`write_zarr` streams a lazy downscaled Dataset to Zarr one output block at a time.
The store's metadata and coordinates are written first, then every block is one task that
computes its chunk of every variable, writes it into the store (chunks of the store are the
blocks, so writes never overlap) and leaves a completion record: an empty file named after
the block in the sibling directory ``<store>.progress/`` (outside the store, which Zarr
would otherwise flag as foreign content), created by atomic rename after the data is written. Running the same request again finds the store, checks that it was made by the same
request (a fingerprint of the attributes, sizes, chunks and times) and computes only the
blocks without a record. Blocks are deterministic, so a rerun (or a task re-run after a
worker died) writes the same bytes and a resumed store equals an uninterrupted one.

:func:`write_reference_netcdf` writes PhysicsNeMo's ``generate.py`` layout: root ``lat``,
``lon`` (y, x) and ``time`` (int64 hours since 1990-01-01), groups ``input`` (regridded inputs,
time x y x), ``truth`` (targets, when the dataset has them) and ``prediction`` (ensemble x
time x y x). It streams one time step at a time into a temporary file renamed into place.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from corrdiff_xr._atomic import atomic_path, write_bytes
from corrdiff_xr.dims import LAT, LON, MEMBER, TIME, X, Y

__all__ = ["progress", "progress_dir", "write_reference_netcdf", "write_zarr"]

PROGRESS_SUFFIX = ".progress"
_FINGERPRINT = "corrdiff_request"
REFERENCE_TIME_UNITS = "hours since 1990-01-01 00:00:00"


def fingerprint(ds: xr.Dataset) -> str:
    """Hash of what a store must hold: attributes, variables, sizes, chunks and times."""
    desc = {
        "attrs": {k: str(v) for k, v in ds.attrs.items()},
        "vars": {n: [list(v.dims), [list(c) for c in (v.chunks or ())]] for n, v in ds.data_vars.items()},
        "sizes": dict(ds.sizes),
        "time": ds[TIME].values.astype("datetime64[ns]").astype(np.int64).tolist(),
    }
    return hashlib.blake2b(json.dumps(desc, sort_keys=True).encode(), digest_size=16).hexdigest()


def _blocks(ds: xr.Dataset) -> list[tuple[tuple[int, ...], dict[str, slice]]]:
    """The common chunk grid of the data variables: (chunk index, {dim: slice}) per block."""
    first = next(iter(ds.data_vars.values()))
    dims = first.dims
    for name, var in ds.data_vars.items():
        if var.dims != dims or var.chunks != first.chunks:
            raise ValueError(f"variable {name!r} is not chunked like {first.name!r}; cannot write by blocks")
    bounds = [np.cumsum((0, *c)) for c in first.chunks]
    blocks = []
    for idx in itertools.product(*(range(len(b) - 1) for b in bounds)):
        blocks.append((idx, {d: slice(int(b[i]), int(b[i + 1])) for d, b, i in zip(dims, bounds, idx)}))
    return blocks


def _block_id(block: dict[str, slice]) -> str:
    return "_".join(f"{d}{s.start}-{s.stop}" for d, s in block.items())


def progress_dir(store: str | os.PathLike) -> Path:
    """Directory of the completion records of ``store``."""
    path = Path(store)
    return path.with_name(path.name + PROGRESS_SUFFIX)


def progress(store: str | os.PathLike) -> set[str]:
    """Ids of the blocks of ``store`` recorded as complete."""
    path = progress_dir(store)
    return {p.name for p in path.iterdir() if not p.name.startswith(".")} if path.exists() else set()


def _touch_atomic(path: Path) -> None:
    write_bytes(path, b"", fsync=False)


def _write_block(values: list[np.ndarray], *, store: str, block: dict[str, slice], done: str,
                 names: list[str]) -> str:
    import zarr

    group = zarr.open_group(store, mode="r+")
    region = tuple(block.values())
    for name, data in zip(names, values):
        group[name][region] = data
    _touch_atomic(progress_dir(store) / done)
    return done


def write_zarr(ds: xr.Dataset, store: str | os.PathLike, *, overwrite: bool = False,
               client: Any = None) -> dict[str, int]:
    """Write ``ds`` to a local Zarr ``store``, resuming an interrupted write of the same request.

    Parameters
    ----------
    ds
        Lazy Dataset from :func:`corrdiff_xr.inference.downscale` (all data variables chunked
        alike).
    store
        Directory of the Zarr store.
    overwrite
        Start again when ``store`` holds a different request (otherwise an error).
    client
        A dask.distributed Client to run on; None uses the current dask scheduler.

    Returns
    -------
    dict
        ``{"blocks": total, "written": computed now, "skipped": already complete}``.
    """
    store = str(store)
    key = fingerprint(ds)
    blocks = _blocks(ds)
    if Path(store).exists():
        try:
            found = xr.open_zarr(store, consolidated=False).attrs.get(_FINGERPRINT)
        except Exception:  # noqa: BLE001 - a broken store is treated as a foreign one
            found = None
        if found != key and not overwrite:
            raise FileExistsError(
                f"{store} exists and holds a different request (fingerprint {found} != {key}); "
                "pass overwrite=True (--overwrite) to replace it"
            )
        fresh = found != key
    else:
        fresh = True
    if fresh:
        encoding = {n: {"chunks": [c[0] for c in v.chunks]} for n, v in ds.data_vars.items()}
        template = ds.copy()
        # coordinates are written now (a lazy lat/lon would otherwise stay unwritten)
        template = template.assign_coords({k: v.load() for k, v in template.coords.items() if v.chunks})
        template.attrs[_FINGERPRINT] = key
        template.to_zarr(store, mode="w", compute=False, encoding=encoding, consolidated=False)
        shutil.rmtree(progress_dir(store), ignore_errors=True)
    progress_dir(store).mkdir(exist_ok=True)
    done = progress(store)
    # One write task per missing block, depending directly on that block's chunk of every
    # variable (built key by key: cheap for thousands of blocks).
    names = list(ds.data_vars)
    arrays = [ds[n].data for n in names]
    wname = f"corrdiff-write-{key}"
    layer = {}
    for idx, block in blocks:
        bid = _block_id(block)
        if bid not in done:
            fn = functools.partial(_write_block, store=store, block=block, done=bid, names=names)
            layer[(wname, *idx)] = (fn, [(a.name, *idx) for a in arrays])
    if layer:
        final = f"corrdiff-written-{key}"
        layer[final] = (len, list(layer))
        graph = HighLevelGraph.from_collections(final, layer, dependencies=arrays)
        job = Delayed(final, graph)
        if client is not None:
            client.compute(job).result()
        else:
            job.compute()
    written = len(layer) - 1 if layer else 0
    _consolidate(store)  # every block is in: readers then open it with one metadata read
    return {"blocks": len(blocks), "written": written, "skipped": len(blocks) - written}


def _consolidate(store: str) -> None:
    import zarr

    with warnings.catch_warnings():
        # consolidated metadata is a zarr-python extension to v3; it saves remote reads
        warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
        zarr.consolidate_metadata(store)


def _time_hours(times: np.ndarray) -> np.ndarray:
    ref = np.datetime64("1990-01-01T00:00:00", "ns")
    return ((times.astype("datetime64[ns]") - ref) // np.timedelta64(1, "h")).astype(np.int64)


def write_reference_netcdf(path: str | os.PathLike, prediction: xr.Dataset, *,
                           inputs: xr.Dataset | None = None, truth: xr.Dataset | None = None) -> Path:
    """Write the reference's NetCDF layout, one time step at a time, atomically.

    Parameters
    ----------
    path
        Output ``.nc`` file.
    prediction
        Downscaled Dataset (``member`` dim optional; written as ``ensemble``).
    inputs, truth
        Regridded inputs (time, y, x) and targets (time, y, x), selected at the prediction's
        times; written to the ``input`` and ``truth`` groups when given.
    """
    import netCDF4

    path = Path(path)
    times = prediction[TIME].values
    ny, nx = prediction.sizes[Y], prediction.sizes[X]
    n_ens = prediction.sizes.get(MEMBER, 1)
    with atomic_path(path) as tmp, netCDF4.Dataset(tmp, "w", format="NETCDF4") as f:
        f.createDimension(TIME)
        f.createDimension("ensemble")
        f.createDimension(Y, ny)
        f.createDimension(X, nx)
        for name, std, units in ((LAT, "latitude", "degrees_north"), (LON, "longitude", "degrees_east")):
            v = f.createVariable(name, "f", (Y, X))
            if name in prediction.coords:
                v[:] = np.broadcast_to(prediction[name].values, (ny, nx))
            v.standard_name, v.units = std, units
        tv = f.createVariable(TIME, "i8", (TIME,))
        tv.calendar, tv.units = "standard", REFERENCE_TIME_UNITS
        groups = {"truth": truth, "prediction": prediction, "input": inputs}
        handles = {}
        for gname, data in groups.items():
            if data is None:
                continue
            g = f.createGroup(gname)
            handles[gname] = g
            for name, var in data.data_vars.items():
                gdims = ("ensemble", TIME, Y, X) if gname == "prediction" else (TIME, Y, X)
                nv = g.createVariable(name, "f", gdims)
                for attr in ("units", "long_name", "standard_name"):
                    if attr in var.attrs:
                        nv.setncattr(attr, str(var.attrs[attr]))
        f.setncattr("history", str(prediction.attrs.get("history", "")))
        for k, v in prediction.attrs.items():
            if k.startswith("corrdiff_") and k != _FINGERPRINT:
                f.setncattr(k, v if isinstance(v, (int, float, str)) else str(v))
        tv[:] = _time_hours(times)
        for i in range(len(times)):
            for gname, g in handles.items():
                step = groups[gname].isel({TIME: i}).compute()
                for name, var in step.data_vars.items():
                    values = var.values
                    if gname == "prediction":
                        values = values if MEMBER in var.dims else values[None]
                        g[name][0:n_ens, i] = values
                    else:
                        g[name][i] = values
    return path
