"""The canonical downscaling layout, role detection from dimensions, and data errors.

One Zarr store holds one flat :class:`xarray.Dataset` with everything a downscaling run needs:
the coarse inputs, the fine targets, the static fields and (optionally) their statistics.

Dimensions and coordinates
--------------------------
``time``
    ``datetime64[ns]``, strictly increasing, no duplicates; shared by inputs and targets (an
    input at time *t* conditions the target at time *t*).
``y``, ``x`` (the fine grid)
    1-D, strictly monotonic coordinates of the same name. On a regular latitude/longitude grid
    they are degrees with ``standard_name`` ``latitude``/``longitude``; on a projected or
    rotated grid they are the projection coordinates (``projection_y_coordinate``,
    ``grid_latitude`` ...). 2-D coordinates ``lat(y, x)`` and ``lon(y, x)`` always give the
    geographic position of every fine pixel.
``y_coarse``, ``x_coarse`` (the coarse grid)
    The same conventions, with 2-D ``lat_coarse(y_coarse, x_coarse)`` and
    ``lon_coarse(y_coarse, x_coarse)``. The coarse grid must cover the fine domain (to within
    half a coarse cell, where the nearest coarse value is used).

Roles follow from dimensions
----------------------------
A data variable's role is read from its dims, so no list of names has to be kept in sync:

* ``(time, y_coarse, x_coarse)`` -> **input** (coarse conditioning, e.g. ERA5 fields),
* ``(time, y, x)`` -> **target** (the km-scale fields to generate),
* ``(y, x)`` -> **static** (orography, land-sea mask; given to the network as channels).

Input names must differ from target names (``t2m_coarse`` vs ``t2m``). Every data variable
carries the CF attributes ``units`` and ``long_name``. Any other dims are an error. Names
found this way are sorted within each role (they become channel orders, and a store's
listing order is not stable); names given explicitly keep the order they are given in.

Statistics
----------
Normalisation statistics are an :class:`xarray.Dataset` with one variable per data variable,
each of dims ``(stat,)`` with coordinate ``stat = ["mean", "std"]``. They may be stored in the
Zarr group ``"stats"`` of the same store (:func:`corrdiff_xr.data.write_stats`); when absent
they are computed lazily with dask (:func:`corrdiff_xr.data.compute_stats`).

Chunking advice
---------------
Chunk ``time`` small (1-8 steps) and keep each variable's spatial field whole or in large
tiles (>= 256 x 256): training draws random times and patches, inference maps one task per
time chunk. Aim for chunks of 1-64 MiB. Coarse inputs are small; keep their spatial dims in
one chunk, since bilinear regridding needs the whole coarse field of a time step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import xarray as xr

from corrdiff_xr.dims import COARSE_DIMS, FINE_DIMS, TIME
from corrdiff_xr.errors import (  # defined below data/ so that lower layers raise them too
    CoordinateError,
    CoverageError,
    DataError,
    DimensionError,
    DTypeError,
    EmptySelectionError,
    MetadataError,
    MissingValueError,
    MissingVariableError,
    NameClashError,
    StatsError,
    StoreError,
    TimeAxisError,
)

#: Zarr group holding the statistics
STATS_GROUP = "stats"
#: order of the ``stat`` coordinate
STAT_NAMES = ("mean", "std")

INPUT_DIMS = (TIME, *COARSE_DIMS)
TARGET_DIMS = (TIME, *FINE_DIMS)
STATIC_DIMS = FINE_DIMS

__all__ = [
    "STATS_GROUP",
    "STAT_NAMES",
    "CoordinateError",
    "CoverageError",
    "DTypeError",
    "DataError",
    "DimensionError",
    "EmptySelectionError",
    "MetadataError",
    "MissingValueError",
    "MissingVariableError",
    "NameClashError",
    "Roles",
    "StatsError",
    "StoreError",
    "TimeAxisError",
    "combine",
    "first_clash",
    "role_of",
    "roles",
]


# -- roles -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Roles:
    """Names of the data variables by role (sorted when detected, see :func:`roles`)."""

    inputs: tuple[str, ...]
    targets: tuple[str, ...]
    static: tuple[str, ...]


def role_of(var: xr.DataArray, name: str = "") -> str:
    """Role (``"input"``, ``"target"`` or ``"static"``) of a variable from its dims.

    Raises
    ------
    DimensionError
        When the dims fit none of the roles; the message names the variable and its dims.
    """
    dims = tuple(var.dims)
    if dims == INPUT_DIMS:
        return "input"
    if dims == TARGET_DIMS:
        return "target"
    if dims == STATIC_DIMS:
        return "static"
    hint = ""
    if set(dims) in (set(INPUT_DIMS), set(TARGET_DIMS), set(STATIC_DIMS)):
        hint = " (the right dims in the wrong order: use .transpose)"
    raise DimensionError(
        f"variable '{name or var.name}' has dims {dims}; expected {INPUT_DIMS} (input), "
        f"{TARGET_DIMS} (target) or {STATIC_DIMS} (static){hint}"
    )


def roles(ds: xr.Dataset) -> Roles:
    """Split the data variables of ``ds`` into inputs, targets and static fields by dims.

    Each role's names are sorted: they become channel orders, and the order in which a
    store lists its variables is not stable (a Zarr store without consolidated metadata
    lists them in filesystem or hash-seed order, which changes from process to process).
    """
    found: dict[str, list[str]] = {"input": [], "target": [], "static": []}
    for name, var in ds.data_vars.items():
        found[role_of(var, str(name))].append(str(name))
    return Roles(*(tuple(sorted(found[role])) for role in ("input", "target", "static")))


def first_clash(parts: Sequence[tuple[str, xr.Dataset]]) -> tuple[str, str, str] | None:
    """The first variable name two labelled ``parts`` share: ``(name, first, second)``."""
    seen: dict[str, str] = {}
    for label, part in parts:
        for name in map(str, part.data_vars):
            if name in seen:
                return name, seen[name], label
            seen[name] = label
    return None


def combine(coarse: xr.Dataset, fine: xr.Dataset, static: xr.Dataset | None = None) -> xr.Dataset:
    """Merge separate coarse, fine and static Datasets into one canonical Dataset.

    The time axes must match exactly (no silent outer/inner join).

    Raises
    ------
    TimeAxisError
        When ``coarse`` and ``fine`` do not share the same times; the message lists the first
        times found in only one of them.
    NameClashError
        When a variable name appears in more than one of the parts.
    """
    parts = [("coarse", coarse), ("fine", fine)] + (
        [("static", static)] if static is not None else []
    )
    clash = first_clash(parts)
    if clash:
        name, first, second = clash
        raise NameClashError(
            f"variable '{name}' is in both the {first} and the {second} dataset; "
            "input and target names must differ"
        )
    if TIME in coarse.dims and TIME in fine.dims:
        tc, tf = coarse.indexes[TIME], fine.indexes[TIME]
        if not tc.equals(tf):
            only_c = [str(t) for t in tc.difference(tf)[:3]]
            only_f = [str(t) for t in tf.difference(tc)[:3]]
            raise TimeAxisError(
                f"time axes of the coarse ({tc.size} steps) and fine ({tf.size} steps) datasets "
                f"differ: only in coarse {only_c}, only in fine {only_f}; select common times first"
            )
    return xr.merge(
        [p for _, p in parts],
        join="exact",
        compat="no_conflicts",
        combine_attrs="drop_conflicts",
    )
