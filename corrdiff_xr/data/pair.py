"""Open a canonical store as a validated, lazy :class:`DownscalingData` pair.

:func:`open_pair` reads metadata and coordinates (to validate and to compute the regridding
weights once) but no array data: variables stay dask arrays chunked as on disk, statistics are
read from the store's ``"stats"`` group or computed lazily, and the inputs regridded to the
fine grid are a lazy graph.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from corrdiff_xr._redact import redact_text, redact_url
from corrdiff_xr.data import integrity
from corrdiff_xr.data.layout import EmptySelectionError, StoreError
from corrdiff_xr.data.regrid import BilinearWeights, bilinear_weights, regrid
from corrdiff_xr.data.stats import check_stats, compute_stats, read_stats
from corrdiff_xr.data.validate import select_roles, validate
from corrdiff_xr.dims import COARSE_DIMS, FINE_DIMS, X, Y

__all__ = ["SUPPORTED_PROTOCOLS", "DownscalingData", "open_dataset", "open_pair"]

#: fsspec protocols a store URL may use (a plain path means a local store)
SUPPORTED_PROTOCOLS = ("file", "memory", "s3", "s3a", "gs", "gcs", "http", "https")


def _check_url(source: str) -> None:
    if "://" not in source:
        return
    for part in source.split("::"):  # fsspec URL chains: simplecache::s3://...
        if "://" not in part:
            protocol = part
        else:
            protocol = part.split("://", 1)[0]
        if protocol not in SUPPORTED_PROTOCOLS and protocol not in (
            "simplecache",
            "filecache",
            "blockcache",
        ):
            raise StoreError(
                f"unknown protocol '{protocol}' in store URL '{redact_url(source)}'; supported: "
                f"{', '.join(p + '://' for p in SUPPORTED_PROTOCOLS)} or a local path"
            )


def open_dataset(
    source: str | os.PathLike,
    *,
    storage_options: dict | None = None,
    missing_chunks: str | None = None,
) -> xr.Dataset:
    """Open a Zarr store lazily: data variables as dask arrays (on-disk chunks), coords loaded.

    The store's chunk listing is checked first and its chunks decode size-checked
    (:mod:`corrdiff_xr.data.integrity`). ``missing_chunks``: ``"refuse"`` (default, or
    ``$CORRDIFF_XR_MISSING_CHUNKS``) refuses absent chunks that would read as numbers;
    ``"fill"`` reads them as the fill value.

    Raises
    ------
    StoreError
        For an unknown URL protocol, a missing path, or a store that cannot be read (naming it);
        :class:`~corrdiff_xr.data.integrity.IntegrityError` for absent chunks or arrays.
    """
    policy = integrity.missing_chunks_policy(missing_chunks)
    source = os.fspath(source)
    _check_url(source)
    local = None if "://" in source else Path(source)
    if source.startswith("file://"):
        local = Path(source[len("file://") :])
    if local is not None and not local.exists():
        raise StoreError(f"Zarr store '{redact_url(source)}' does not exist")
    try:
        with warnings.catch_warnings(), integrity.guarded_codecs():
            # consolidated metadata is optional in Zarr 3; falling back is not worth a warning
            warnings.filterwarnings("ignore", message="Failed to open Zarr store with consolidated")
            absent = integrity.check_store(source, storage_options=storage_options, policy=policy)
            ds = xr.open_zarr(source, chunks={}, storage_options=storage_options)
            # coordinates are read without dask (they are small and needed to validate)
            raw = xr.open_zarr(source, chunks=None, storage_options=storage_options)
        coords = {
            k: xr.Variable(raw[k].dims, np.asarray(raw[k].values), raw[k].attrs)
            for k in ds.coords
            if k not in ds.indexes
        }
    except StoreError:
        raise
    except Exception as err:  # zarr/fsspec raise many types for unreadable stores
        # fsspec/aiohttp messages repeat the URL, query tokens included; a redacted message
        # drops the chained original, which would show them again (with --debug)
        shown = f"'{redact_url(source)}': {type(err).__name__}: {redact_text(str(err))}"
        if shown != f"'{source}': {type(err).__name__}: {err}":
            raise StoreError(f"cannot read Zarr store {shown}") from None
        raise StoreError(f"cannot read Zarr store {shown}") from err
    ds = integrity.apply_policy(
        ds.assign_coords(coords), absent, policy=policy, where=redact_url(source)
    )
    # a copy of our output written elsewhere must not look like one of our outputs
    from corrdiff_xr._outputs import PRODUCT_ATTR

    ds.attrs.pop(PRODUCT_ATTR, None)
    return ds


@dataclass(frozen=True, eq=False)
class DownscalingData:
    """A validated downscaling dataset: coarse inputs, fine targets, static fields, stats.

    Everything is lazy. Attributes are the flat ``dataset`` (selected variables only) and the
    names by role; ``stored_stats`` holds given or stored statistics (None: computed lazily);
    ``weights`` the bilinear weights, shared by selections that keep the grids.
    """

    dataset: xr.Dataset
    inputs: tuple[str, ...]
    targets: tuple[str, ...]
    static: tuple[str, ...]
    stored_stats: xr.Dataset | None = field(default=None, repr=False)
    weights: BilinearWeights | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        sizes = self.dataset.sizes
        grids = (
            f"time={sizes.get('time')}, fine=({sizes.get(Y)}, {sizes.get(X)}), "
            f"coarse=({sizes.get(COARSE_DIMS[0])}, {sizes.get(COARSE_DIMS[1])})"
        )
        stats = "stored" if self.stored_stats is not None else "lazy"
        return (
            f"DownscalingData({grids}, inputs={list(self.inputs)}, "
            f"targets={list(self.targets)}, static={list(self.static)}, stats={stats})"
        )

    @property
    def names(self) -> tuple[str, ...]:
        """All variable names: inputs, targets, static."""
        return self.inputs + self.targets + self.static

    @property
    def coarse(self) -> xr.Dataset:
        """The inputs on the coarse grid ``(time, y_coarse, x_coarse)``."""
        return self.dataset[list(self.inputs)]

    @property
    def fine(self) -> xr.Dataset:
        """The targets on the fine grid ``(time, y, x)``."""
        return self.dataset[list(self.targets)]

    @property
    def static_fields(self) -> xr.Dataset:
        """The static fields ``(y, x)``."""
        return self.dataset[list(self.static)]

    @cached_property
    def regrid_weights(self) -> BilinearWeights:
        """Bilinear weights from the coarse to the fine grid (computed once)."""
        return self.weights if self.weights is not None else bilinear_weights(self.dataset)

    @cached_property
    def inputs_on_fine(self) -> xr.Dataset:
        """The inputs bilinearly regridded to ``(time, y, x)``, lazily."""
        return regrid(self.dataset, self.inputs, weights=self.regrid_weights)

    @cached_property
    def stats(self) -> xr.Dataset:
        """Mean and std per variable (stored ones, else a lazy dask computation)."""
        if self.stored_stats is not None:
            return self.stored_stats[list(self.names)]
        return compute_stats(self.dataset, self.names)

    # -- selections --------------------------------------------------------------------------
    def isel(
        self,
        indexers: Mapping[Hashable, Any] | None = None,
        *,
        stats: str = "keep",
        **kwargs: Any,
    ) -> DownscalingData:
        """Positional selection; a scalar index keeps its dim (length 1), so the layout holds.

        Parameters
        ----------
        indexers, **kwargs
            Positions per dimension.
        stats
            ``"keep"`` (default): statistics stay those of this pair, so normalisation does
            not change (inference, plots). ``"selection"``: statistics of the selected data
            only, computed lazily; stored or given statistics are dropped unless the selection
            keeps every time step they describe. Training uses ``"selection"`` on its period
            so validation times cannot leak into the normalisation.
        """
        if stats not in ("keep", "selection"):
            raise ValueError(f"stats must be 'keep' or 'selection', got {stats!r}")
        indexers = dict(indexers or {}, **kwargs)
        unknown = set(indexers) - set(self.dataset.dims)
        if unknown:
            raise EmptySelectionError(
                f"cannot select on {sorted(map(str, unknown))}: not dims of the dataset {tuple(self.dataset.dims)}"
            )
        indexers = {
            k: ([v] if np.ndim(v) == 0 and not isinstance(v, slice) else v)
            for k, v in indexers.items()
        }
        ds = self.dataset.isel(indexers)
        for dim, size in ds.sizes.items():
            if size == 0:
                raise EmptySelectionError(
                    f"the selection {indexers[dim]!r} leaves dimension '{dim}' empty"
                )
        weights = None
        if not set(indexers) & set(COARSE_DIMS):
            w = self.regrid_weights
            weights = (
                w.isel(y=indexers.get(Y, slice(None)), x=indexers.get(X, slice(None)))
                if set(indexers) & set(FINE_DIMS)
                else w
            )
        own: xr.Dataset | None = self.stats
        if stats == "selection" and not all(
            _selects_all(indexers[d], self.dataset.sizes[d]) for d in indexers
        ):
            own = None  # computed lazily over the selection (DownscalingData.stats)
        return DownscalingData(ds, self.inputs, self.targets, self.static, own, weights)

    def sel(
        self,
        indexers: Mapping[Hashable, Any] | None = None,
        *,
        stats: str = "keep",
        **kwargs: Any,
    ) -> DownscalingData:
        """Label-based selection (same rules and ``stats`` option as :meth:`isel`)."""
        indexers = dict(indexers or {}, **kwargs)
        positions = {}
        for dim, label in indexers.items():
            if dim not in self.dataset.dims:
                raise EmptySelectionError(f"cannot select on '{dim}': not a dim of the dataset")
            index = xr.DataArray(
                np.arange(self.dataset.sizes[dim]),
                coords={dim: self.dataset[dim]},
                dims=(dim,),
            )
            positions[dim] = index.sel({dim: label}).values
        return self.isel(positions, stats=stats)


def _selects_all(index: object, size: int) -> bool:
    """Whether a positional indexer picks every position of a dim exactly once."""
    if isinstance(index, slice):
        return len(range(*index.indices(size))) == size
    index = np.asarray(index)
    if index.dtype == bool:
        return index.size == size and bool(index.all())
    return index.size == size and np.array_equal(np.sort(index % size), np.arange(size))


def open_pair(
    source: str | os.PathLike | xr.Dataset,
    *,
    inputs: str | Sequence[str] | None = None,
    targets: str | Sequence[str] | None = None,
    static: str | Sequence[str] | None = None,
    storage_options: dict | None = None,
    stats: xr.Dataset | None = None,
    require_targets: bool = True,
    check_values: bool = False,
) -> DownscalingData:
    """Open and validate a canonical dataset as a lazy :class:`DownscalingData`.

    Parameters
    ----------
    source
        A Zarr store path or fsspec URL (``file://``, ``memory://``, ``s3://``, ``gs://`` ...)
        or an :class:`xarray.Dataset` in the canonical layout.
    inputs, targets, static
        Variable names to use; None means all variables of that role (found from dims).
    storage_options
        Passed to fsspec (credentials, endpoint URLs).
    stats
        Statistics to use instead of the store's ``"stats"`` group (or lazy computation).
    require_targets
        False for inference-only data without targets.
    check_values
        Also load the static fields and fail on NaNs (off by default so no array is read).

    Raises
    ------
    DataError
        A subclass naming the culprit: see :mod:`corrdiff_xr.data.validate`.
    """
    if isinstance(source, xr.Dataset):
        ds = source
        stored = None
    else:
        ds = open_dataset(source, storage_options=storage_options)
        stored = read_stats(os.fspath(source), storage_options=storage_options)
    sel = select_roles(ds, inputs=inputs, targets=targets, static=static)
    names = sel.inputs + sel.targets + sel.static
    validate(
        ds,
        inputs=sel.inputs,
        targets=sel.targets,
        static=sel.static,
        require_targets=require_targets,
        check_values=check_values,
        check_coverage=False,
    )
    weights = bilinear_weights(ds)  # also the coverage check
    if stats is not None:
        stored = stats
    if stored is not None:
        check_stats(stored, names)
    kept = ds[list(names)]
    # inference-only data (no targets, no static fields) has no variable on the fine dims,
    # and a selection of variables drops coordinates on dims no variable has
    kept = kept.assign_coords({c: ds.coords[c] for c in (Y, X, "lat", "lon") if c in ds.coords})
    # CF bounds of the axes (time_bnds on (time, bnds)) are metadata worth keeping, but a
    # selection of variables drops coordinates on dims no variable has
    bounds = {str(c.attrs["bounds"]) for c in kept.coords.values() if "bounds" in c.attrs}
    kept = kept.assign_coords({b: ds.coords[b] for b in bounds if b in ds.coords})
    return DownscalingData(kept, sel.inputs, sel.targets, sel.static, stored, weights)
