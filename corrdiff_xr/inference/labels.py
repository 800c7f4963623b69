"""Labels for a downscaling's block arrays: dims, coordinates, CF and provenance attributes.

:func:`to_dataset` wraps the per-channel arrays of :func:`corrdiff_xr.inference.graph.
block_arrays` as the Dataset ``downscale`` returns: one variable per target, the input's
time, the fine grid's y, x, lat and lon, the model's units, the data's grid mapping, and
attributes saying how it was made (seed, sampler, model, patching, member groups).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import TYPE_CHECKING

import dask.array as da
import numpy as np
import xarray as xr

from corrdiff_xr.dims import LAT, LON, MEMBER, TIME, X, Y

if TYPE_CHECKING:
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.inference.block import BlockTask

__all__ = ["Labels", "to_dataset"]


@dataclasses.dataclass(frozen=True)
class Labels:
    """What labels a downscaling's block arrays (see :func:`to_dataset`).

    ``task`` is the request's :class:`~corrdiff_xr.inference.block.BlockTask` (model token,
    grid, seed, sampler); ``src`` gives the time, y and x coordinates, ``dataset`` (the
    pair's) lat/lon and the targets' attributes.
    """

    output: str  # downscaling.Output: "ensemble", "mean" or "residual"
    task: BlockTask
    members: int
    patched: bool
    codec: Codec
    src: xr.Dataset
    dataset: xr.Dataset


def to_dataset(stacked: dict[str, list[da.Array]], labels: Labels) -> xr.Dataset:
    """Wrap the block arrays (one per kind and channel) as a labelled Dataset with CF and
    provenance attributes."""
    from corrdiff_xr._cf import with_grid_mapping
    from corrdiff_xr._version import __version__

    output, src, dataset, codec, grid = (
        labels.output,
        labels.src,
        labels.dataset,
        labels.codec,
        labels.task.grid,
    )
    dims: tuple[str, ...]
    if output == "ensemble":
        data, dims = stacked["sample"], (MEMBER, TIME, Y, X)
    elif output == "residual":
        data = [s - m[None] for s, m in zip(stacked["sample"], stacked["mean"])]
        dims = (MEMBER, TIME, Y, X)
    else:
        data, dims = stacked["mean"], (TIME, Y, X)
    coords: dict[str, xr.DataArray | xr.Variable | tuple[str, np.ndarray, dict[str, str]]] = {
        TIME: src[TIME],
        Y: src[Y],
        X: src[X],
    }
    for name in (LAT, LON):
        if name in dataset.coords:
            coords[name] = dataset[name].variable
    if MEMBER in dims:
        coords[MEMBER] = (MEMBER, np.arange(labels.members), {"long_name": "ensemble member"})
    variables: dict[str, xr.Variable] = {}
    for c, name in enumerate(codec.out_channels):
        attrs = dict(codec.attrs.get(name, {}))
        if name in dataset:
            attrs.update(
                {
                    k: v
                    for k, v in dataset[name].attrs.items()
                    if k in ("units", "long_name", "standard_name")
                }
            )
        units = codec.units[name]
        if units is not None:  # the values are the model's, in its units
            attrs["units"] = units
        if output == "residual":
            attrs["long_name"] = (
                f"{attrs.get('long_name', name)} (residual: member minus regression mean)"
            )
        elif output == "mean":
            attrs["long_name"] = f"{attrs.get('long_name', name)} (regression mean)"
        variables[name] = xr.Variable(dims, data[c], attrs)
    patch_desc = (
        "none (whole domain)"
        if not labels.patched
        else json.dumps(
            {
                "shape": list(grid.patch),
                "origins_y": list(grid.starts[0]),
                "origins_x": list(grid.starts[1]),
                # tiled means differ from one call: a store of either never resumes as the other
                "mean": "tiles"
                if labels.task.mean_tiles
                else ("whole" if labels.task.whole_mean else "patches"),
            }
        )
    )
    seed, members = labels.task.seed, labels.members
    provenance: dict[str, str | int] = {
        "title": f"CorrDiff {output} downscaled with corrdiff_xr",
        "source": f"corrdiff_xr {__version__}",
        "history": f"corrdiff_xr.downscale(output={output!r}, members={members}, seed={seed})",
        "corrdiff_output": output,
        "corrdiff_seed": seed,
        "corrdiff_members": members,
        "corrdiff_sampler": json.dumps(labels.task.sampler.record(), default=str),
        "corrdiff_model": os.path.basename(labels.task.token.path),
        "corrdiff_patching": patch_desc,
        # members per sampling call: members depend on it by float rounding (block.py)
        "corrdiff_batch_size": labels.task.batch_size,
    }
    # the data's CF grid mapping: y, x are coordinates of its projection
    return with_grid_mapping(xr.Dataset(variables, coords=coords, attrs=provenance), dataset)
