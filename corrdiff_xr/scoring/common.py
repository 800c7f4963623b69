"""Input checks, truth matching and aggregation shared by the scores (private)."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import TypeVar

import numpy as np
import xarray as xr

Dims = Hashable | Sequence[Hashable] | None
#: a score's input kind, which its result keeps: a Dataset, or a DataArray
DataT = TypeVar("DataT", xr.Dataset, xr.DataArray)
#: a forecast or truth
Data = xr.Dataset | xr.DataArray


def _sqrt(obj: DataT) -> DataT:
    """``np.sqrt`` of an xarray object, lazily, attributes kept."""
    return np.sqrt(obj)  # type: ignore[return-value]  # numpy's stubs say ndarray


def _to_dataset(obj: xr.Dataset | xr.DataArray, role: str) -> tuple[xr.Dataset, bool]:
    """A Dataset (and whether ``obj`` was a DataArray), lazy coordinates chunked like the data."""
    if isinstance(obj, xr.Dataset):
        return _coords_like_data(obj), False
    if isinstance(obj, xr.DataArray):
        name = obj.name if obj.name is not None else "value"
        return _coords_like_data(obj.to_dataset(name=name)), True
    raise TypeError(f"{role} must be an xarray Dataset or DataArray, got {type(obj).__name__}")


def _coords_like_data(obj: DataT) -> DataT:
    """Dask-backed non-index coordinates (2-D lat/lon) rechunked, lazily, like the data.

    A store may chunk its coordinates its own way; lifted kernels refuse an object whose
    variables are chunked inconsistently along a dim. Nothing is computed."""
    data = [obj] if isinstance(obj, xr.DataArray) else list(obj.data_vars.values())
    chunks: dict[Hashable, tuple[int, ...]] = {}
    for var in data:
        if var.chunks is not None:
            for d, c in zip(var.dims, var.chunks):
                chunks.setdefault(d, c)
    lazy = {
        k: v.chunk({d: chunks[d] for d in v.dims if d in chunks})
        for k, v in obj.coords.items()
        if k not in obj.indexes and v.chunks is not None
    }
    return obj.assign_coords(lazy) if lazy else obj


def _as_ensemble(forecast: xr.Dataset, member_dim: str) -> xr.Dataset:
    """A deterministic forecast (no variable has ``member_dim``) as a one-member ensemble, so
    it scores like one: CRPS = MAE, no spread. Anything else is returned unchanged."""
    if any(member_dim in v.dims for v in forecast.data_vars.values()):
        return forecast
    return forecast.expand_dims({member_dim: 1}).transpose(member_dim, ...)


def _back(ds: xr.Dataset, like: DataT) -> DataT:
    """``ds`` as the kind of ``like``: its one variable when ``like`` is a DataArray."""
    if isinstance(like, xr.DataArray):
        return ds[next(iter(ds.data_vars))]
    return ds


def _check_forecast(forecast: xr.Dataset, member_dim: str) -> None:
    if not forecast.data_vars:
        raise ValueError("forecast has no data variables to score")
    for name, var in forecast.data_vars.items():
        if member_dim not in var.dims:
            others = [n for n, v in forecast.data_vars.items() if member_dim in v.dims]
            raise ValueError(
                f"forecast variable {name!r} has no {member_dim!r} dimension (dims {var.dims}) "
                f"but {others} have one; score an ensemble and a deterministic forecast "
                "separately, or pass member_dim= if the ensemble dimension has another name"
            )


def _matched_truth(forecast: xr.Dataset, truth: xr.Dataset, member_dim: str) -> xr.Dataset:
    """Truth variables named like the forecast's, on the forecast's coordinates."""
    missing = [n for n in forecast.data_vars if n not in truth.data_vars]
    if missing:
        raise ValueError(
            f"truth lacks forecast variable(s) {missing}; truth has {list(truth.data_vars)}"
        )
    truth = truth[list(forecast.data_vars)]
    # the forecast's auxiliary coords (lat, lon...) win; comparing lazy copies would compute
    shared = [c for c in truth.coords if c not in truth.indexes and c in forecast.coords]
    truth = truth.drop_vars(shared)
    if member_dim in truth.dims:
        raise ValueError(f"truth must not have the ensemble dimension {member_dim!r}")
    for dim in truth.dims:
        if dim not in forecast.dims:
            raise ValueError(f"truth dimension {dim!r} is not a forecast dimension")
        if dim not in truth.coords or dim not in forecast.coords:
            if truth.sizes[dim] != forecast.sizes[dim]:
                raise ValueError(
                    f"dimension {dim!r} has size {truth.sizes[dim]} in truth but "
                    f"{forecast.sizes[dim]} in forecast"
                )
            continue
        want, have = forecast.indexes[dim], truth.indexes[dim]
        if want.equals(have):
            continue
        if want.isin(have).all():  # e.g. forecast for a few times out of a longer truth
            truth = truth.sel({dim: want})
        elif (
            len(want) == len(have)
            and np.issubdtype(want.dtype, np.number)
            and np.allclose(np.asarray(want, float), np.asarray(have, float), rtol=1e-6)
        ):  # float32 vs float64 grid coordinates from different writers
            truth = truth.assign_coords({dim: forecast[dim]})
        else:
            raise ValueError(
                f"truth coordinate {dim!r} does not cover the forecast's: forecast has "
                f"{want[:3].tolist()}... ({len(want)}), truth {have[:3].tolist()}... ({len(have)})"
            )
    return truth


def _prepare(forecast: Data, truth: Data, member_dim: str) -> tuple[xr.Dataset, xr.Dataset, bool]:
    """Forecast and matched truth as Datasets, and whether to hand back a DataArray."""
    fc, was_array = _to_dataset(forecast, "forecast")
    if was_array and isinstance(truth, xr.DataArray):
        tr, _ = _to_dataset(truth.rename(next(iter(fc.data_vars))), "truth")
    else:
        tr, _ = _to_dataset(truth, "truth")
    fc = _as_ensemble(fc, member_dim)
    _check_forecast(fc, member_dim)
    return fc, _matched_truth(fc, tr, member_dim), was_array


def _mean_dims(ds: xr.Dataset, dim: Dims, member_dim: str) -> list[Hashable]:
    if dim is None:
        return [d for d in ds.dims if d != member_dim]
    dims = [dim] if isinstance(dim, str) or not isinstance(dim, Iterable) else list(dim)
    unknown = [d for d in dims if d not in ds.dims]
    if unknown:
        raise ValueError(f"cannot reduce over {unknown}: dims are {tuple(ds.dims)}")
    if member_dim in dims:
        raise ValueError(f"dim must not include the ensemble dimension {member_dim!r}")
    return dims


def _aggregate(
    score: xr.Dataset, dims: Sequence[Hashable], weights: xr.DataArray | None
) -> xr.Dataset:
    """Mean over ``dims`` (NaN skipped), weighted by ``weights`` if given."""
    if not dims:
        return score
    if weights is None:
        return score.mean(dims, keep_attrs=True)
    if not isinstance(weights, xr.DataArray):
        raise TypeError(f"weights must be an xarray DataArray, got {type(weights).__name__}")
    extra = [d for d in weights.dims if d not in score.dims]
    if extra:
        raise ValueError(f"weights dims {extra} are not dims of the scores {tuple(score.dims)}")
    reduce_dims = [d for d in dims if d in score.dims]
    return score.weighted(weights.fillna(0.0)).mean(reduce_dims, keep_attrs=True)


def _single_chunk(var: xr.DataArray, dim: str) -> xr.DataArray:
    """apply_ufunc needs core dims in one chunk; rechunk lazily when they are not.

    Only the data is rechunked, then lazy coordinates follow it (``DataArray.chunk`` would
    also chunk in-memory coordinates, along this dim only, unlike the data along the others)."""
    if var.chunks is not None and len(var.chunks[var.get_axis_num(dim)]) > 1:
        return _coords_like_data(var.copy(data=var.data.rechunk({var.get_axis_num(dim): -1})))
    return var


def _with_attrs(
    out: xr.Dataset, source: xr.Dataset, long_name: str, squared: bool = False
) -> xr.Dataset:
    for name, var in out.data_vars.items():
        units = source[name].attrs.get("units")
        attrs = {"long_name": f"{long_name} of {source[name].attrs.get('long_name', name)}"}
        if units is not None:
            attrs["units"] = f"({units})^2" if squared else units
        var.attrs = attrs
    return out
