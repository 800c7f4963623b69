"""Normalisation statistics: lazy one-pass mean/std, stored in the Zarr group ``"stats"``.

:func:`compute_stats` builds a dask graph that visits every chunk once: each chunk reduces to
its count, mean and sum of squared deviations ``M2`` (accumulated in float64 whatever the
stored dtype: float16, packed int16, float32; NaNs skipped), and partial results merge
pairwise up a tree with the parallel update of Chan, Golub & LeVeque (1979)::

    n = na + nb,  mean = mean_a + d * nb / n,  M2 = M2a + M2b + d**2 * na * nb / n,  d = mean_b - mean_a

which, unlike a raw sum of squares, loses no precision on fields with a large mean (t2m near
280 K). ``std`` is the population standard deviation ``sqrt(M2 / n)``. Memory stays at a few
chunks whatever the dataset size, since every chunk is reduced to three numbers as soon as it
is read.

With ``transforms`` (``{name: callable}``, e.g. a codec's
:class:`~corrdiff_xr.transforms.Transform`) each chunk is transformed (in float64) before it
is reduced, so the statistics are those of the transformed values, in the same single pass.
A store's ``"stats"`` group holds statistics of raw values: for a transformed variable they
do not apply, and :meth:`corrdiff_xr.codec.Codec.from_pair` computes that variable's lazily
instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any, TypeAlias

import dask
import dask.array as da
import numpy as np
import xarray as xr

from corrdiff_xr._atomic import atomic_path
from corrdiff_xr.data.integrity import READ_BUDGET_ENV, check_read, guarded_codecs, read_budget
from corrdiff_xr.data.layout import (
    STAT_NAMES,
    STATS_GROUP,
    MissingVariableError,
    StatsError,
)
from corrdiff_xr.dims import STAT

__all__ = [
    "check_stats",
    "compute_stats",
    "read_stats",
    "stats_dataset",
    "stats_to_dict",
    "write_stats",
]

_FANIN = 16
#: where statistics live: a path or URL, or an fsspec mapper
StoreLike: TypeAlias = "str | os.PathLike[str] | MutableMapping[str, bytes]"
#: a transform of a flat array before its moments are taken
Transform: TypeAlias = Callable[[np.ndarray], np.ndarray]


def _moments(block: np.ndarray, transform: Transform | None = None) -> np.ndarray:
    """``[count, mean, M2]`` of the finite values of a block (after ``transform``, which
    returns a transformed float64 copy), accumulated in float64.

    float32 blocks keep float32 deviations (half the memory traffic of float64; a deviation
    from a nearby centre is exact), whose squares are formed and summed in float64. Every
    other dtype is upcast to float64 first: float16 squares overflow past 256 (orography in
    metres gave ``std inf``), and integers (raw or packed) must not wrap.
    """
    x = np.asarray(block).ravel()
    if transform is not None:
        x = np.asarray(transform(x), dtype=np.float64)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    finite = np.isfinite(x)
    if not finite.all():
        x = x[finite]
    if x.size == 0:
        return np.zeros(3)
    n = x.size
    mean = x.sum(dtype=np.float64) / n
    d = x - x.dtype.type(mean)
    # shifted-data formula: the centre was rounded to the block's dtype, s1 corrects for it
    s1 = d.sum(dtype=np.float64)
    m2 = np.einsum("i,i->", d, d, dtype=np.float64) - s1 * s1 / n
    return np.array([n, mean, max(m2, 0.0)])


def _merge(*parts: np.ndarray) -> np.ndarray:
    n, mean, m2 = 0.0, 0.0, 0.0
    for nb, mb, m2b in parts:
        if nb == 0:
            continue
        tot = n + nb
        d = mb - mean
        mean += d * nb / tot
        m2 += m2b + d * d * n * nb / tot
        n = tot
    return np.array([n, mean, m2])


def _finish(part: np.ndarray) -> np.ndarray:
    n, mean, m2 = part
    if n == 0:
        return np.array([np.nan, np.nan])
    return np.array([mean, np.sqrt(m2 / n)])


def _mean_std(data: np.ndarray | da.Array, transform: Transform | None = None) -> da.Array:
    """Lazy ``[mean, std]`` of an array (dask or numpy, optionally transformed), one pass
    over its chunks."""
    lazy = data if isinstance(data, da.Array) else da.from_array(np.asarray(data), chunks=-1)
    # optimize_graph=False keeps task names, so variables cut from one generated chunk share it
    parts = [
        dask.delayed(_moments)(b, transform) for b in lazy.to_delayed(optimize_graph=False).ravel()
    ]
    while len(parts) > 1:
        parts = [dask.delayed(_merge)(*parts[i : i + _FANIN]) for i in range(0, len(parts), _FANIN)]
    return da.from_delayed(dask.delayed(_finish)(parts[0]), shape=(2,), dtype=np.float64)


def compute_stats(
    ds: xr.Dataset,
    variables: list[str] | tuple[str, ...] | None = None,
    *,
    budget_gb: float | None = None,
    transforms: Mapping[str, Transform] | None = None,
) -> xr.Dataset:
    """Lazy mean and standard deviation of each data variable over all its dims.

    Parameters
    ----------
    ds
        Dataset of data variables (dask- or numpy-backed).
    variables
        Names to include; default every data variable.
    budget_gb
        Most gigabytes the pass may read, checked against the declared sizes before the
        graph is built (default ``$CORRDIFF_XR_READ_BUDGET_GB`` or 256): a store declaring
        10**12 values is refused rather than read for days.
    transforms
        ``{name: f}``: the statistics of ``name`` are those of ``f(values)`` (``f`` takes a
        flat array and returns a transformed float64 copy; NaN stays missing).

    Returns
    -------
    xarray.Dataset
        One float64 variable per name, dims ``(stat,)``, ``stat = ["mean", "std"]``,
        dask-backed: nothing is read until it is computed. ``units`` are carried over.
    """
    names = list(map(str, ds.data_vars)) if variables is None else list(variables)
    for name in names:
        if name not in ds.data_vars:
            raise MissingVariableError(f"cannot compute statistics of '{name}': not in the dataset")
    _check_budget(ds, names, budget_gb)
    transforms = dict(transforms or {})
    out = {}
    for name in names:
        var = ds[name]
        attrs = {k: var.attrs[k] for k in ("units", "long_name") if k in var.attrs}
        out[name] = ((STAT,), _mean_std(var.data, transforms.get(name)), attrs)
    # object dtype: stored as Zarr v3 variable-length strings (a specified dtype)
    return xr.Dataset(out, coords={STAT: np.array(STAT_NAMES, dtype=object)})


def _check_budget(ds: xr.Dataset, names: list[str], budget_gb: float | None) -> None:
    """Refuse a pass that would read more than the budget (arrays in memory are free)."""
    lazy = {n: ds[n].size * ds[n].dtype.itemsize for n in names if ds[n].chunks is not None}
    if lazy:
        largest = max(lazy, key=lazy.__getitem__)
        check_read(
            sum(lazy.values()),
            f"statistics of {len(lazy)} variable(s) (largest '{largest}', {dict(ds[largest].sizes)})",
            budget=read_budget(budget_gb),
            raise_with="select a shorter period, store statistics with write_stats, or raise "
            f"${READ_BUDGET_ENV} (in GB)",
        )


def _local_path(store: StoreLike) -> Path | None:
    if isinstance(store, os.PathLike):
        return Path(store)
    if isinstance(store, str):
        if store.startswith("file://"):
            return Path(store[len("file://") :])
        if "://" not in store:
            return Path(store)
    return None


def write_stats(
    store: StoreLike, stats: xr.Dataset, *, storage_options: dict[str, Any] | None = None
) -> None:
    """Compute ``stats`` and write them to the group ``"stats"`` of a Zarr store.

    On a local filesystem the group is written beside the store's other groups under a
    temporary name and renamed into place, so a crash never leaves half-written statistics.
    """
    stats = check_stats(stats.compute())
    # variable-length strings: fixed-width unicode has no Zarr v3 spec yet
    stats = stats.assign_coords({STAT: np.array(STAT_NAMES, dtype=object)})
    local = _local_path(store)
    if local is None:
        stats.to_zarr(
            store,
            group=STATS_GROUP,
            mode="w",
            storage_options=storage_options,
            consolidated=False,
        )
        return
    if not local.is_dir():
        raise StatsError(f"cannot write statistics: Zarr store {local} does not exist")
    with atomic_path(local / STATS_GROUP) as tmp:
        stats.to_zarr(tmp, mode="w", consolidated=False)


def read_stats(
    store: StoreLike, *, storage_options: dict[str, Any] | None = None
) -> xr.Dataset | None:
    """The statistics stored in ``store``'s ``"stats"`` group, or None when there are none."""
    local = _local_path(store)
    if local is not None and not (local / STATS_GROUP).exists():
        return None
    try:
        # not via the root's consolidated metadata, which predates the group
        with guarded_codecs():  # .load() below must not inflate a hostile chunk whole
            stats = xr.open_zarr(
                store,
                group=STATS_GROUP,
                storage_options=storage_options,
                chunks=None,
                consolidated=False,
            )
    except (FileNotFoundError, KeyError, OSError, ValueError):
        return None
    except Exception as err:  # zarr raises its own errors for a missing group
        if type(err).__name__ in (
            "GroupNotFoundError",
            "NodeNotFoundError",
            "PathNotFoundError",
        ):
            return None
        raise
    return stats.load()


def check_stats(stats: xr.Dataset, names: list[str] | tuple[str, ...] | None = None) -> xr.Dataset:
    """Check the layout of a statistics Dataset (and that it holds ``names``); return it.

    Values are only checked (NaN, non-positive std) when they are already in memory.

    Raises
    ------
    StatsError
        Naming the variable that is missing or whose statistics are unusable.
    """
    if STAT not in stats.dims or list(stats[STAT].values) != list(STAT_NAMES):
        raise StatsError(f"statistics need a '{STAT}' coordinate equal to {list(STAT_NAMES)}")
    for wanted in names or ():
        if wanted not in stats.data_vars:
            raise StatsError(
                f"statistics are missing for variable '{wanted}' (have "
                f"{sorted(map(str, stats.data_vars))}); "
                "recompute them with corrdiff_xr.data.compute_stats"
            )
    for name, var in stats.data_vars.items():
        if var.dims != (STAT,):
            raise StatsError(f"statistics of '{name}' have dims {var.dims}; expected ('{STAT}',)")
        if var.chunks is None:
            mean, std = (float(v) for v in var.values)
            if not (np.isfinite(mean) and np.isfinite(std)):
                raise StatsError(f"statistics of '{name}' are not finite (mean {mean}, std {std})")
            if std <= 0:
                raise StatsError(
                    f"std of '{name}' is {std}: a constant field cannot be normalised; drop it"
                )
    return stats


def stats_to_dict(
    stats: xr.Dataset, names: list[str] | tuple[str, ...] | None = None
) -> dict[str, tuple[float, float]]:
    """``{name: (mean, std)}`` as Python floats (computes lazy statistics)."""
    names = list(map(str, stats.data_vars)) if names is None else list(names)
    check_stats(stats, names)
    stats = check_stats(stats[names].compute())
    return {n: (float(stats[n].values[0]), float(stats[n].values[1])) for n in names}


def stats_dataset(stats: Mapping[str, tuple[float, float]]) -> xr.Dataset:
    """Statistics in the canonical form: one ``(stat,)`` variable per name, stat=[mean, std]."""
    return xr.Dataset(
        {name: (STAT, np.array(ms, np.float64)) for name, ms in stats.items()},
        coords={STAT: list(STAT_NAMES)},
    )
