"""Checks of what names an archive (:func:`~corrdiff_xr.data.archives.open_archives`' specs
and a catalog pair's archives), made before anything is read.

A spec is read once and nothing in it may be lost quietly: an unknown key (a typo such as
``varibles``) is refused with the known ones and the closest match; a variables map may
only give names every store can hold, one native variable per name; a window is two whole,
non-negative positions. Static fields, small and read whole anyway, are checked for values
too: NaN or inf in one would otherwise surface in the first training batch.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import dask
import numpy as np
import xarray as xr

from corrdiff_xr.data.layout import (
    DataError,
    EmptySelectionError,
    MissingValueError,
    NameClashError,
    first_clash,
)

__all__ = [
    "SOURCE_KEYS",
    "check_complete",
    "check_distinct",
    "check_keys",
    "check_names",
    "check_variables",
    "given_options",
    "window_slice",
]

#: the keys of an archive given as a mapping (``engine``: :mod:`corrdiff_xr.data.sources.formats`)
SOURCE_KEYS = (
    "url", "dataset", "storage_options", "variables", "select", "engine", "backend_kwargs",
)  # fmt: skip


def check_keys(
    given: Iterable[object], known: Sequence[str], what: str, *, error: type = DataError
) -> None:
    """Refuse keys of ``given`` outside ``known``, naming each with its closest known key."""
    for key in given:
        if key in known:
            continue
        close = difflib.get_close_matches(str(key), list(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise error(f"{what}: unknown key {key!r}{hint}; the known keys are {sorted(known)}")


def _unset(value: object) -> bool:
    return value is None or (isinstance(value, str) and value == "")


def given_options(options: Mapping[str, Any] | None) -> dict | None:
    """``options`` without the unset ones, at any depth, or None if none is left.

    Unset is None, ``""`` or a mapping left empty: a catalog's parameters that the user did
    not give. False and 0 are values (``anon: false``).
    """
    kept = {}
    for key, value in dict(options or {}).items():
        if isinstance(value, Mapping):
            value = given_options(value)
        if not _unset(value):
            kept[key] = value
    return kept or None


def check_distinct(parts: Sequence[tuple[str, xr.Dataset]]) -> None:
    """Refuse two archives of one role giving the same variable name: a merge would keep one
    of them (or fail with xarray's words), whichever of the two the user meant."""
    clash = first_clash(parts)
    if clash:
        name, first, second = clash
        raise NameClashError(
            f"{first} and {second} both give a variable {name!r}; give one of them "
            f"another name in its variables map, e.g. {{'{name}': '{name}_2'}}"
        )


def _name_problem(name: object) -> str | None:
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a string"
    if not name.strip():
        return "is empty"
    if "/" in name:
        return "holds '/', which Zarr and NetCDF read as a group path"
    if name.startswith("."):
        return "starts with '.', which marks hidden and metadata files in a store"
    return None


def check_names(names: Iterable[object], what: str, *, mapped: bool = False) -> None:
    """Refuse variable names that a Zarr store or NetCDF file cannot hold as they are;
    ``mapped``: the names are a variables map's (else the archive's own)."""
    for name in names:
        problem = _name_problem(name)
        if problem is None:
            continue
        plain = str(name).replace("/", "_").lstrip(".").strip() or "t2m"
        fix = (
            f"name it {plain!r} in the variables map"
            if mapped
            else f"map it to a plain name, variables={{{str(name)!r}: {plain!r}}}"
        )
        raise NameClashError(f"{what}: variable name {name!r} {problem}; {fix}")


def check_variables(variables: object, what: str) -> None:
    """Refuse a variables map that is not ``{native: name}`` with storable, distinct names."""
    if variables is None:
        return
    if not isinstance(variables, Mapping):
        raise DataError(
            f"{what}: variables must be a mapping {{native name: name in the pair}}, got a "
            f"{type(variables).__name__}"
        )
    for native in variables:
        if not isinstance(native, str):
            raise NameClashError(
                f"{what}: variables key {native!r} is a {type(native).__name__}; native "
                "variable names are strings (quote it in YAML)"
            )
    check_names(variables.values(), f"{what}: variables", mapped=True)
    seen: dict[str, str] = {}
    for native, name in variables.items():
        if name in seen:
            raise NameClashError(
                f"{what}: variables map both {seen[name]!r} and {native!r} to {name!r}; one "
                "would be lost: give each its own name"
            )
        seen[name] = native


def window_slice(dim: str, bounds: Any, size: int) -> slice:
    """``slice(start, stop)`` of a window's ``[start, stop]`` along ``dim`` of ``size``."""
    bounds = bounds.tolist() if isinstance(bounds, np.ndarray) else bounds
    whole = (
        isinstance(bounds, Sequence)
        and not isinstance(bounds, str)
        and len(bounds) == 2
        and all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in bounds)
    )
    if not whole or not 0 <= bounds[0] < bounds[1] <= size:
        raise EmptySelectionError(
            f"window {dim}={bounds!r}: expected two whole positions [start, stop] with "
            f"0 <= start < stop <= {size} (the fine grid's size along {dim}), e.g. [0, {size}]"
        )
    return slice(int(bounds[0]), int(bounds[1]))


def check_complete(ds: xr.Dataset, what: str) -> None:
    """Refuse NaN or inf in ``ds``'s (static, 2-D) fields, naming the variable and counts.

    Static fields are inputs at every time step, and no static field has a mask: a gap must
    be filled in the archive (orography 0 over the sea, say).
    """
    counts = {
        name: (np.isnan(var.data).sum(), np.isinf(var.data).sum())
        for name, var in ds.data_vars.items()
    }
    (counts,) = dask.compute(counts)
    for name, (n_nan, n_inf) in counts.items():
        if n_nan or n_inf:
            raise MissingValueError(
                f"{what}: static field '{name}' holds {int(n_nan)} NaN and {int(n_inf)} inf "
                "value(s) over the fine domain; static fields must be complete: fill them in "
                "the archive (e.g. orography 0 over the sea)"
            )
