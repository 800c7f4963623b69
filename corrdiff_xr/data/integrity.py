"""Integrity of Zarr inputs: absent chunks, decompression bombs and read budgets.

Zarr reads an absent chunk as the array's fill value, silently: a failed upload or a
partial sync would feed zeros to a model. :func:`check_store` lists each array's keys once
(one list per array prefix, cheap on object stores) and compares them with the chunk grid,
before any array data or coordinate is read. Which absent chunks were meant (Zarr 3 omits a
chunk equal to the fill value under its default ``write_empty_chunks=False``, and so does
xarray's ``to_zarr``)? The rule:

* an array of one value may lack its chunk: xarray omits a grid-mapping container, or a
  single time step at the reference time of its units (encoded 0), for equalling the fill;
* a data variable whose fill value reads as *missing* (NaN, or its ``_FillValue``/
  ``missing_value``), other than an input or a static field, may lack chunks: they read as
  NaN, which targets may hold (the masked loss skips it). Opening warns all the same
  (:class:`IntegrityWarning`, naming the variable, the first chunk and its time), and
  ``encoding[ABSENT_KEY]`` records it for ``inspect``;
* everywhere else an absent chunk is refused (:class:`MissingChunkError`, naming the
  variable, the first chunk and its time): in coordinates, inputs and static fields (NaN
  is refused there anyway), and where the fill value reads as a number (0.0 for an array
  written without ``_FillValue``). A store omitting such chunks on purpose is read with
  ``CORRDIFF_XR_MISSING_CHUNKS=fill`` (or ``open_dataset(..., missing_chunks="fill")``).

The same pass refuses arrays that consolidated metadata names but the store lacks, and
coordinates too large to load at open (:data:`OPEN_BUDGET_BYTES`). A store that cannot be
listed (plain HTTP, a bucket without List permission) is opened with a warning, unchecked.

Decoding is bounded by :func:`guarded_codecs`: arrays opened inside it decode Blosc, Zstd
and Gzip chunks with codecs that compare the decoded size with the chunk's
(shape x itemsize, times :data:`BOMB_FACTOR`) before allocating (Blosc and Zstd headers
state it; an unstated Zstd size decodes into a buffer of exactly the chunk's) or while
inflating (Gzip, via ``zlib``'s ``max_length``). Arrays in Zarr format 2 and ``numcodecs.*``
codecs are not covered. Whole-array reads (statistics, ``inspect``) check the declared size
against a budget (:func:`read_budget`, :func:`check_read`) before reading anything.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import math
import os
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
import zarr
from zarr.abc.store import Store
from zarr.codecs.blosc import BloscCodec
from zarr.codecs.gzip import GzipCodec
from zarr.codecs.zstd import ZstdCodec
from zarr.core.array_spec import ArraySpec
from zarr.core.buffer import Buffer
from zarr.core.buffer.cpu import as_numpy_array_wrapper
from zarr.registry import fully_qualified_name, register_codec

from corrdiff_xr._redact import redact_url
from corrdiff_xr.data.layout import INPUT_DIMS, STATIC_DIMS, StoreError
from corrdiff_xr.dims import TIME

__all__ = [
    "ABSENT_KEY",
    "MISSING_CHUNKS_ENV",
    "READ_BUDGET_ENV",
    "ChunkSizeError",
    "IntegrityError",
    "IntegrityWarning",
    "MissingChunkError",
    "ReadBudgetError",
    "check_read",
    "check_store",
    "guarded_codecs",
    "human_size",
    "read_budget",
]

log = logging.getLogger(__name__)

#: set to ``fill`` to read absent chunks as the fill value (stores written on purpose so)
MISSING_CHUNKS_ENV = "CORRDIFF_XR_MISSING_CHUNKS"
#: gigabytes a whole-array read (statistics) may declare before it is refused
READ_BUDGET_ENV = "CORRDIFF_XR_READ_BUDGET_GB"
DEFAULT_READ_BUDGET_GB = 256.0
#: coordinates loaded when a store is opened (2-D lat/lon of a 5000 x 5000 grid: 0.2 GB)
OPEN_BUDGET_BYTES = 2 * 10**9
#: a chunk may decode to at most this multiple of its size (plus a little, for headers)
BOMB_FACTOR = 2
_SLACK = 64 * 2**10
#: encoding key recording accepted absent chunks: (count, total, time of the first, fill)
ABSENT_KEY = "corrdiff_xr_absent_chunks"
_META_KEYS = ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata")


class IntegrityError(StoreError):
    """A store's content is incomplete or hostile: absent chunks or arrays, oversized data."""


class MissingChunkError(IntegrityError):
    """Chunks (or a whole array) are absent where no fill value was intended."""


class ChunkSizeError(IntegrityError):
    """A chunk decodes (or declares it decodes) to far more than its shape holds."""


class ReadBudgetError(IntegrityError):
    """A read would exceed its size budget."""


class IntegrityWarning(UserWarning):
    """Chunks are absent where they may be on purpose (they read as missing values)."""


def human_size(nbytes: float) -> str:
    """``1.2 GB`` style (decimal units, as the budgets are given)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{int(nbytes)} B"


# -- read budgets ---------------------------------------------------------------------------
def read_budget(gb: float | None = None) -> float:
    """The budget in bytes: ``gb`` if given, else ``$CORRDIFF_XR_READ_BUDGET_GB``, else 256 GB."""
    if gb is None:
        raw = os.environ.get(READ_BUDGET_ENV, "").strip()
        try:
            gb = float(raw) if raw else DEFAULT_READ_BUDGET_GB
        except ValueError:
            raise ReadBudgetError(
                f"${READ_BUDGET_ENV} is {raw!r}; set it to a number of gigabytes, e.g. 500"
            ) from None
    if not gb > 0:
        raise ReadBudgetError(f"a read budget must be a positive number of GB, got {gb!r}")
    return gb * 1e9


def check_read(nbytes: float, what: str, *, budget: float, raise_with: str) -> None:
    """Announce a read of ``nbytes`` (logged) and refuse it past ``budget`` bytes."""
    log.info("%s: reading %s (budget %s)", what, human_size(nbytes), human_size(budget))
    if nbytes > budget:
        raise ReadBudgetError(
            f"{what} would read {human_size(nbytes)}, more than the budget of "
            f"{human_size(budget)}; {raise_with}"
        )


# -- bounded decoding -----------------------------------------------------------------------
def _limits(spec: ArraySpec) -> tuple[int, int] | None:
    """(exact decoded bytes, refusal limit) of a chunk; None for variable-size dtypes."""
    dtype = spec.dtype.to_native_dtype()
    if dtype.kind not in "biufcmM":
        return None
    exact = math.prod(spec.shape) * dtype.itemsize
    return exact, BOMB_FACTOR * exact + _SLACK


def _refuse(codec: str, size: str, spec: ArraySpec, exact: int) -> ChunkSizeError:
    return ChunkSizeError(
        f"a {codec} chunk of shape {tuple(spec.shape)} ({spec.dtype.to_native_dtype()}, "
        f"{human_size(exact)}) inflates to {size}: corrupt or hostile (a decompression "
        "bomb), refused before it was decoded whole; re-copy the store from its source"
    )


def _zstd_content_size(raw: np.ndarray) -> int | None:
    """The frame content size a Zstd frame header states (None: not stated)."""
    if raw.size < 6 or bytes(raw[:4]) != b"\x28\xb5\x2f\xfd":
        return None
    fhd = int(raw[4])
    single = (fhd >> 5) & 1
    pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3]
    size = (1 if single else 0, 2, 4, 8)[fhd >> 6]
    if size == 0 or raw.size < pos + size:
        return None
    value = int.from_bytes(bytes(raw[pos : pos + size]), "little")
    return value + 256 if size == 2 else value


class GuardedBloscCodec(BloscCodec):
    """Blosc, refusing a chunk whose header states more than its shape holds."""

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> Buffer:
        limits = _limits(chunk_spec)
        raw = chunk_bytes.as_numpy_array()
        if limits is not None and raw.size >= 16:
            stated = int.from_bytes(bytes(raw[4:8]), "little")
            if stated > limits[1]:
                raise _refuse("Blosc", human_size(stated), chunk_spec, limits[0])
        return super()._decode_sync(chunk_bytes, chunk_spec)


class GuardedZstdCodec(ZstdCodec):
    """Zstd, refusing a frame that states (or, unstated, decodes to) too many bytes."""

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> Buffer:
        limits = _limits(chunk_spec)
        if limits is None:
            return super()._decode_sync(chunk_bytes, chunk_spec)
        stated = _zstd_content_size(chunk_bytes.as_numpy_array())
        if stated is not None:
            if stated > limits[1]:
                raise _refuse("Zstd", human_size(stated), chunk_spec, limits[0])
            return super()._decode_sync(chunk_bytes, chunk_spec)
        out = np.empty(limits[0], np.uint8)  # unstated: decode into exactly the chunk

        def decode(raw: np.ndarray) -> np.ndarray:
            try:
                return self._zstd_codec.decode(raw, out=out)
            except (RuntimeError, ValueError) as err:
                other = f"other than its {limits[0]} bytes ({err})"
                raise _refuse("Zstd", other, chunk_spec, limits[0]) from None

        # zarr's annotation says the function returns bytes; it takes any buffer, as here
        return as_numpy_array_wrapper(decode, chunk_bytes, chunk_spec.prototype)  # type: ignore[arg-type]


class GuardedGzipCodec(GzipCodec):
    """Gzip, inflated with a bound (zlib ``max_length``) instead of whole."""

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> Buffer:
        limits = _limits(chunk_spec)
        if limits is None:
            return super()._decode_sync(chunk_bytes, chunk_spec)
        data, out = bytes(chunk_bytes.as_numpy_array()), b""
        while data:  # a gzip stream may hold several members
            inflater = zlib.decompressobj(wbits=31)
            out += inflater.decompress(data, limits[1] + 1 - len(out))
            if len(out) > limits[1] or inflater.unconsumed_tail:
                raise _refuse("Gzip", f"more than {human_size(limits[1])}", chunk_spec, limits[0])
            if not inflater.eof:
                raise ChunkSizeError(
                    f"a Gzip chunk of shape {tuple(chunk_spec.shape)} is truncated; re-copy "
                    "the store from its source"
                )
            data = inflater.unused_data
        return chunk_spec.prototype.buffer.from_bytes(out)


_GUARDED = {"blosc": GuardedBloscCodec, "zstd": GuardedZstdCodec, "gzip": GuardedGzipCodec}
for _key, _cls in _GUARDED.items():
    register_codec(_key, _cls)


@contextlib.contextmanager
def guarded_codecs() -> Iterator[None]:
    """Arrays opened inside decode Blosc/Zstd/Gzip with size-checked codecs, for good.

    Zarr resolves codecs when it parses an array's metadata, so the guard stays with the
    arrays (and their dask tasks) after the block ends; other Zarr use is unaffected.
    """
    with zarr.config.set({f"codecs.{k}": fully_qualified_name(c) for k, c in _GUARDED.items()}):
        yield


# -- absent chunks and arrays ----------------------------------------------------------------
@dataclass(frozen=True)
class Absent:
    """Absent chunks of one array: the first (grid index), how many, of how many."""

    name: str
    dims: tuple[str, ...]
    chunk: tuple[int, ...]
    first: tuple[int, ...]
    count: int
    total: int
    fill: object
    coordinate: bool
    reads_missing: bool
    size: int


def missing_chunks_policy(value: str | None = None) -> str:
    """``refuse`` (default) or ``fill``: ``value``, else ``$CORRDIFF_XR_MISSING_CHUNKS``."""
    value = value or os.environ.get(MISSING_CHUNKS_ENV, "").strip() or "refuse"
    if value not in ("refuse", "fill"):
        raise MissingChunkError(
            f"missing_chunks (or ${MISSING_CHUNKS_ENV}) is {value!r}; use 'refuse' or 'fill'"
        )
    return value


def _dims(arr: zarr.Array) -> tuple[str, ...]:
    names = getattr(arr.metadata, "dimension_names", None)
    names = names or arr.attrs.get("_ARRAY_DIMENSIONS") or ()
    return tuple(str(n) for n in names) if isinstance(names, (list, tuple)) else ()


def _coordinate_names(group: zarr.Group, arrays: dict[str, zarr.Array]) -> set[str]:
    """Names xarray loads when opening: dimension coordinates and CF ``coordinates``."""
    names = {d for arr in arrays.values() for d in _dims(arr)}
    for attrs in [group.attrs, *(a.attrs for a in arrays.values())]:
        names |= set(str(attrs.get("coordinates", "")).split())
    return names & set(arrays)


def _reads_missing(arr: zarr.Array) -> bool:
    """Whether the fill value decodes to missing (NaN, or the CF _FillValue/missing_value)."""
    fill = arr.fill_value
    if isinstance(fill, (float, np.floating)) and np.isnan(fill):
        return True
    for key in ("_FillValue", "missing_value"):
        marker = arr.attrs.get(key)
        if isinstance(marker, str):  # xarray writes a float _FillValue to Zarr 3 as base64
            with contextlib.suppress(ValueError, TypeError):
                raw = base64.b64decode(marker, validate=True)
                marker = np.frombuffer(raw, arr.dtype)[0].item()
        if isinstance(marker, (int, float)) and not isinstance(marker, bool) and fill == marker:
            return True
    return False


async def _listings(store: Store, arrays: list[zarr.Array]) -> list[tuple]:
    """``(has metadata, *_first_absent)`` per array: lists a few at a time, each listing
    reduced as soon as it is complete (a set of 10**5 keys is tens of MB)."""
    gate = asyncio.Semaphore(4)

    async def one(arr: zarr.Array) -> tuple:
        prefix = f"{arr.path}/"
        async with gate:
            if isinstance(store, zarr.storage.LocalStore):  # os.walk: 3x zarr's listing
                keys = await asyncio.to_thread(_walk, os.path.join(store.root, arr.path))
            else:
                keys = {k[len(prefix) :] async for k in store.list_prefix(prefix)}
        return (bool(keys & set(_META_KEYS)), *_first_absent(arr, keys))

    return await asyncio.gather(*(one(a) for a in arrays))


def _walk(root: str) -> set[str]:
    """Keys below a local directory, relative to it, '/'-separated."""
    cut = len(root) + 1
    return {
        os.path.join(folder, f)[cut:].replace(os.sep, "/")
        for folder, _, files in os.walk(root)
        for f in files
    }


def _list_or_warn(store: Store, arrays: list[zarr.Array], source: str) -> list[tuple] | None:
    """:func:`_listings`, or None (no check) where the store cannot list, with a warning."""
    protocol = source.rpartition("::")[2].partition("://")[0] if "://" in source else ""
    try:
        if protocol in ("http", "https") or not store.supports_listing:
            raise OSError(f"{protocol or type(store).__name__} cannot list keys")
        return zarr.core.sync.sync(_listings(store, arrays))
    except Exception as err:  # no List permission on a public bucket, a plain web server
        warnings.warn(
            f"store '{redact_url(source)}': its keys cannot be listed ({type(err).__name__}), "
            "so absent chunks are not detected and would read as the fill value",
            IntegrityWarning,
            stacklevel=4,
        )
        return None


def _first_absent(
    arr: zarr.Array, keys: set[str]
) -> tuple[tuple[int, ...], tuple[int, ...], int, int]:
    """(chunk shape, first absent grid index or (), absent count, total) of one array.

    The grid is walked in order only until the first absent key, so the work is bounded
    by the listing's length however many chunks the metadata declares.
    """
    chunk = tuple(arr.shards or arr.chunks)
    grid = tuple(math.ceil(s / c) for s, c in zip(arr.shape, chunk, strict=True))
    total = math.prod(grid)
    listed = len([k for k in keys if k.rsplit("/", 1)[-1] not in _META_KEYS])
    for coords in itertools.product(*map(range, grid)):
        if arr.metadata.encode_chunk_key(coords) not in keys:
            return chunk, coords, max(1, total - listed), total
    return chunk, (), 0, total


def _open_group(source: str, storage_options: dict[str, Any] | None) -> zarr.Group:
    remote = "://" in source and not source.startswith("file://")
    options = storage_options if remote else None
    return zarr.open_group(source, mode="r", storage_options=options)


def check_store(
    source: str, *, storage_options: dict | None = None, policy: str = "refuse"
) -> dict[str, Absent]:
    """Check a store's arrays before xarray opens it; return the arrays with absent chunks.

    Raises
    ------
    MissingChunkError
        An array named in the consolidated metadata is absent from the store, or (with
        ``policy="refuse"``) a coordinate lacks chunks.
    ReadBudgetError
        The coordinates loaded at open declare more than :data:`OPEN_BUDGET_BYTES`.
    """
    where = redact_url(source)
    with guarded_codecs():
        group = _open_group(source, storage_options)
        arrays = {name: arr for name, arr in group.arrays()}
    coords = _coordinate_names(group, arrays)
    size = sum(arrays[n].nbytes for n in coords)
    if size > OPEN_BUDGET_BYTES:
        biggest = max(sorted(coords), key=lambda n: arrays[n].nbytes)
        raise ReadBudgetError(
            f"store '{where}': its coordinates declare {human_size(size)} (largest "
            f"'{biggest}', shape {arrays[biggest].shape}), more than the "
            f"{human_size(OPEN_BUDGET_BYTES)} read at open; is the grid's shape right?"
        )
    names = sorted(arrays)
    listings = _list_or_warn(group.store, [arrays[n] for n in names], source)
    if listings is None:
        return {}
    found = {}
    for name, (listed, chunk, first, count, total) in zip(names, listings, strict=True):
        if not listed:
            raise MissingChunkError(
                f"array '{name}' is named in the consolidated metadata of store '{where}' "
                "but absent from it; re-consolidate (zarr.consolidate_metadata) or re-copy "
                "the store"
            )
        arr = arrays[name]
        if count:
            found[name] = Absent(
                name, _dims(arr), chunk, first, count, total, arr.fill_value,
                name in coords, _reads_missing(arr), arr.size,
            )  # fmt: skip
            if policy == "refuse" and name in coords and not _may_be_absent(found[name]):
                raise _absent_error(found[name], "", where)
    return found


def _time_of(ds: xr.Dataset, absent: Absent) -> str:
    if TIME not in absent.dims or TIME not in ds.coords:
        return ""
    axis = absent.dims.index(TIME)
    value = ds[TIME].values[absent.first[axis] * absent.chunk[axis]]
    text = np.datetime_as_string(value, unit="m") if isinstance(value, np.datetime64) else value
    return f", from time {text}"


def apply_policy(
    ds: xr.Dataset, absent: dict[str, Absent], *, policy: str, where: str
) -> xr.Dataset:
    """Refuse absent chunks (see the module docstring); warn of and record accepted ones."""
    for item in absent.values():
        if item.size == 1:
            continue
        when = _time_of(ds, item)
        if policy == "refuse" and not _may_be_absent(item):
            raise _absent_error(item, when, where)
        if policy == "refuse":  # accepted, but a partial copy looks just like this
            warnings.warn(
                f"variable '{item.name}' of store '{where}': {item.count} of {item.total} "
                f"chunks are absent (first {item.first}{when}) and read as missing values "
                "(NaN); if that is not intended, re-copy the store",
                IntegrityWarning,
                stacklevel=3,
            )
        if item.name in ds.variables:
            ds.variables[item.name].encoding[ABSENT_KEY] = (
                item.count, item.total, when.removeprefix(", from time "),
                np.asarray(item.fill).item(),
            )  # fmt: skip
    return ds


def _may_be_absent(item: Absent) -> bool:
    """Whether chunks may be omitted on purpose (as xarray omits those equal to the fill).

    A single value equal to the fill is (a grid-mapping container, one time step at the
    reference time of its units). Otherwise only chunks that read as missing (NaN) may be,
    and never in an input, a static field or a coordinate, where NaN is refused.
    """
    if item.size == 1:
        return True
    canonical = item.dims in (INPUT_DIMS, STATIC_DIMS)
    return item.reads_missing and not item.coordinate and not canonical


def _absent_error(item: Absent, when: str, where: str) -> MissingChunkError:
    kind = "coordinate" if item.coordinate else "variable"
    return MissingChunkError(
        f"{kind} '{item.name}' of store '{where}': {item.count} of {item.total} chunks are "
        f"absent (the first {item.first}, dims {item.dims}{when}) and would read as "
        f"{np.asarray(item.fill).item()!r}; re-copy the store (a failed upload or partial "
        f"sync?), or if chunks equal to the fill value were omitted on purpose, set "
        f"{MISSING_CHUNKS_ENV}=fill"
    )
