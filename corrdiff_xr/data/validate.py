"""Checks of the canonical layout with errors that name the culprit and what was expected.

:func:`validate` looks at metadata and coordinates only, unless ``check_values=True`` asks it
to load the static fields too (they are small: one 2-D field each). It never computes a
time-dependent array: NaNs in inputs and targets are caught later, per batch, by the codec.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from corrdiff_xr.data.layout import (
    CoordinateError,
    DimensionError,
    DTypeError,
    EmptySelectionError,
    MetadataError,
    MissingValueError,
    MissingVariableError,
    NameClashError,
    Roles,
    role_of,
    roles,
)
from corrdiff_xr.dims import (
    COARSE_DIMS,
    FINE_DIMS,
    LAT,
    LAT_COARSE,
    LON,
    LON_COARSE,
    TIME,
)

__all__ = ["select_roles", "validate"]

_REQUIRED_ATTRS = ("units", "long_name")


def _as_tuple(names: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if names is None:
        return None
    return (names,) if isinstance(names, str) else tuple(names)


def select_roles(
    ds: xr.Dataset,
    *,
    inputs: str | Sequence[str] | None = None,
    targets: str | Sequence[str] | None = None,
    static: str | Sequence[str] | None = None,
) -> Roles:
    """Names by role: those given (checked against their dims) or, when None, all found.

    Given names keep the order they are given in; names found from dims are sorted
    (:func:`~corrdiff_xr.data.layout.roles`), never in the store's listing order, which
    may change from one process to the next. These orders become the codec's channels.

    Raises
    ------
    MissingVariableError, DimensionError, NameClashError
    """
    given = {
        "input": _as_tuple(inputs),
        "target": _as_tuple(targets),
        "static": _as_tuple(static),
    }
    seen: dict[str, str] = {}
    for role, names in given.items():
        for name in names or ():
            if name in seen:
                raise NameClashError(
                    f"variable '{name}' is selected as both {seen[name]} and {role}; input and "
                    "target names must differ"
                )
            seen[name] = role
    for role, names in given.items():
        for name in names or ():
            if name not in ds.data_vars:
                raise MissingVariableError(
                    f"{role} variable '{name}' is not in the dataset; it has {sorted(map(str, ds.data_vars))}"
                )
            found = role_of(ds[name], name)
            if found != role:
                raise DimensionError(
                    f"variable '{name}' was requested as {role} but its dims {ds[name].dims} "
                    f"make it a {found}"
                )
    if any(v is None for v in given.values()):
        detected = roles(ds[[n for n in ds.data_vars if n not in seen]] if seen else ds)
    else:
        detected = Roles((), (), ())
    return Roles(
        given["input"] if given["input"] is not None else detected.inputs,
        given["target"] if given["target"] is not None else detected.targets,
        given["static"] if given["static"] is not None else detected.static,
    )


def _check_dim_coord(ds: xr.Dataset, dim: str) -> None:
    if dim not in ds.dims:
        raise DimensionError(
            f"dimension '{dim}' is missing from the dataset (dims {tuple(ds.dims)})"
        )
    if ds.sizes[dim] == 0:
        raise EmptySelectionError(
            f"dimension '{dim}' is empty (length 0); the selection left no data"
        )
    if dim not in ds.coords:
        raise CoordinateError(f"dimension '{dim}' has no coordinate variable '{dim}'")
    values = ds[dim].values
    if dim == TIME:
        from corrdiff_xr.data.times import check_time_axis

        check_time_axis(values, name=TIME)
        return
    if not np.issubdtype(values.dtype, np.number):
        raise CoordinateError(f"coordinate '{dim}' has dtype {values.dtype}; expected numbers")
    if np.isnan(values).any():
        raise CoordinateError(
            f"coordinate '{dim}' holds NaN at positions {np.flatnonzero(np.isnan(values))[:5].tolist()}"
        )
    if values.size > 1:
        step = np.diff(values)
        if not (np.all(step > 0) or np.all(step < 0)):
            bad = int(np.flatnonzero(np.sign(step) != np.sign(step[0]))[0]) + 1
            raise CoordinateError(
                f"coordinate '{dim}' is not strictly monotonic (breaks at index {bad}: "
                f"{values[bad - 1]!r} -> {values[bad]!r})"
            )


def _check_2d_coord(ds: xr.Dataset, name: str, dims: tuple[str, str]) -> None:
    if name not in ds.coords:
        raise CoordinateError(f"2-D coordinate '{name}' with dims {dims} is missing")
    var = ds.coords[name]
    if var.dims != dims:
        raise CoordinateError(
            f"coordinate '{name}' has dims {var.dims} and shape {var.shape}; expected dims {dims} "
            f"and shape {tuple(ds.sizes[d] for d in dims if d in ds.sizes)}"
        )
    values = np.asarray(var.values)
    if not np.issubdtype(values.dtype, np.number):
        raise CoordinateError(f"coordinate '{name}' has dtype {values.dtype}; expected numbers")
    if np.isnan(values).any():
        raise CoordinateError(
            f"coordinate '{name}' holds {int(np.isnan(values).sum())} NaN value(s)"
        )


def _check_variable(ds: xr.Dataset, name: str) -> None:
    var = ds[name]
    if not (
        np.issubdtype(var.dtype, np.floating)
        or np.issubdtype(var.dtype, np.integer)
        or var.dtype == bool
    ):
        raise DTypeError(
            f"variable '{name}' has dtype {var.dtype}; expected a numeric (float/int) dtype"
        )
    missing = [a for a in _REQUIRED_ATTRS if not str(var.attrs.get(a, "")).strip()]
    if missing:
        raise MetadataError(
            f"variable '{name}' lacks the CF attribute(s) {missing}; set e.g. "
            f"ds['{name}'].attrs['units'] = 'K'"
        )


def validate(
    ds: xr.Dataset,
    *,
    inputs: str | Sequence[str] | None = None,
    targets: str | Sequence[str] | None = None,
    static: str | Sequence[str] | None = None,
    require_targets: bool = True,
    check_values: bool = True,
    check_coverage: bool = True,
) -> xr.Dataset:
    """Check that ``ds`` follows the canonical layout; return it unchanged.

    Parameters
    ----------
    ds
        The dataset (see :mod:`corrdiff_xr.data.layout`).
    inputs, targets, static
        Names to use (and check); None means all variables of that role.
    require_targets
        False for inference-only data that has inputs and static fields but no targets.
    check_values
        Load the static fields and fail on NaNs in them (cheap: 2-D fields only).
    check_coverage
        Check that the coarse grid covers the fine domain (coordinates only).

    Raises
    ------
    DataError
        A subclass naming the variable, dim, or coordinate at fault and what was expected.
    """
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"validate expects an xarray.Dataset, got {type(ds).__name__}")
    sel = select_roles(ds, inputs=inputs, targets=targets, static=static)
    if not sel.inputs:
        raise EmptySelectionError(
            "no input variables: expected at least one (time, y_coarse, x_coarse) variable"
        )
    if require_targets and not sel.targets:
        raise EmptySelectionError(
            "no target variables: expected at least one (time, y, x) variable "
            "(pass require_targets=False for inference-only data)"
        )
    for dim in (TIME, *COARSE_DIMS, *FINE_DIMS):
        _check_dim_coord(ds, dim)
    _check_2d_coord(ds, LAT, FINE_DIMS)
    _check_2d_coord(ds, LON, FINE_DIMS)
    _check_2d_coord(ds, LAT_COARSE, COARSE_DIMS)
    _check_2d_coord(ds, LON_COARSE, COARSE_DIMS)
    for name in (*sel.inputs, *sel.targets, *sel.static):
        _check_variable(ds, name)
    if check_coverage:
        from corrdiff_xr.data.regrid import bilinear_weights

        bilinear_weights(ds)
    if check_values:
        for name in sel.static:
            n_nan = int(np.isnan(np.asarray(ds[name].values, dtype=np.float64)).sum())
            if n_nan:
                raise MissingValueError(
                    f"static field '{name}' holds {n_nan} NaN value(s); static fields must be "
                    "complete (fill them, e.g. orography 0 over the sea)"
                )
    return ds
