"""Crash-safe, resumable Zarr writes.

:func:`write_zarr` streams a lazy downscaled Dataset to Zarr one output block at a time. A
process killed at any file write leaves either nothing but hidden leftovers (which the next
run removes) or a store that running the same request again completes to equal an
uninterrupted run:

* The store is initialised atomically: metadata, coordinates and the identity record are
  written into a hidden sibling (:func:`corrdiff_xr._atomic.atomic_path`) that is renamed
  into place, so a store at the path always has all its metadata.
* Every block is one task that computes its chunk of every variable, writes it into the
  store (chunks of the store are the blocks, so writes never overlap) and then leaves a
  completion record: an empty file named after the block in the sibling directory
  ``<store>.progress/`` (outside the store, where Zarr would see foreign content), created by
  atomic rename. The records of a store are deleted before that store is replaced, so a
  record always describes the store at the path.
* The missing blocks go to dask a window at a time, in time order
  (:func:`corrdiff_xr.inference._submit.run_windows`): the first block is written within
  seconds even at 10**5 time steps, where one ``compute`` of all would order the whole graph
  first. The store's metadata is written from a template of one-chunk placeholders.
* One run at a time writes a store: :func:`corrdiff_xr._lock.output_lock`. Each record
  holds the fingerprint of the inputs its block read; a resume whose inputs changed since
  is refused (:mod:`corrdiff_xr.inference.fingerprint`), so a store never mixes two inputs.
* The identity record (root attribute :data:`IDENTITY_ATTR`, plain JSON) holds the request
  (:mod:`corrdiff_xr.inference.request`: checkpoint digest, data source, sampling settings
  ...) and the store's layout (variables, sizes, chunks, times, coordinates, attributes). A
  run that finds a store of another request refuses and names the fields that differ
  (:func:`corrdiff_xr._identity.differences`), unless ``overwrite``.

Nothing is replaced that corrdiff_xr did not write: stores and NetCDF files carry the
product marker (:data:`corrdiff_xr._outputs.PRODUCT_ATTR`), the record directory a marker
file, and :func:`corrdiff_xr._outputs.check_output` refuses anything else (a user's
directory or file, a foreign store), with or without ``overwrite``. Blocks are
deterministic, so a rerun (or a task re-run after a worker died) writes the same bytes.

"""

from __future__ import annotations

import itertools
import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import xarray as xr

from corrdiff_xr._atomic import (
    atomic_path,
    discard,
    remove_leftovers,
    remove_stale,
)
from corrdiff_xr._identity import ABSENT, DIGEST, differences, digest, plain
from corrdiff_xr._lock import output_lock
from corrdiff_xr._outputs import PRODUCT_ATTR, check_output, mark_directory, product_of
from corrdiff_xr._redact import redact_text
from corrdiff_xr.dims import TIME
from corrdiff_xr.errors import OutputExistsError
from corrdiff_xr.inference._submit import paused_gc, write_blocks
from corrdiff_xr.inference.fingerprint import Fingerprints, changed_inputs, input_fingerprints
from corrdiff_xr.inference.request import SETTINGS_ATTR, request_identity, times_fingerprint

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "IDENTITY_ATTR",
    "RequestMismatchError",
    "block_ids",
    "holds_request",
    "progress",
    "progress_dir",
    "store_identity",
    "times_fingerprint",
    "write_zarr",
]

PROGRESS_SUFFIX = ".progress"
#: root attribute (Zarr) / global attribute (NetCDF) holding the identity record, as JSON
IDENTITY_ATTR = "corrdiff_request"
# zarr's LocalStore writes each file as <name>.<32 hex>.partial, then renames it
_ZARR_PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")


class RequestMismatchError(OutputExistsError):
    """An output of ours holds another request than the one being run."""


# -- the identity record -----------------------------------------------------------------------


def _chunking(chunks: tuple[int, ...]) -> int | list[int]:
    """One size for regular chunks (the last may be shorter), else every chunk."""
    regular = all(c == chunks[0] for c in chunks[:-1]) and chunks[-1] <= chunks[0]
    return int(chunks[0]) if regular else [int(c) for c in chunks]


def _values_digest(var: xr.DataArray) -> dict[str, Any]:
    values = np.asarray(var.values)
    data = (
        json.dumps(values.tolist(), default=str).encode()
        if values.dtype.kind == "O"
        else (np.ascontiguousarray(values).tobytes())
    )
    return {"dims": list(var.dims), "dtype": str(values.dtype), DIGEST: digest(data)}


def store_identity(ds: xr.Dataset, request: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The identity record of a store of ``ds``: the caller's ``request`` and the layout.

    ``request`` describes what produced ``ds``: a
    :func:`~corrdiff_xr.inference.request.request_identity`, or any JSON-able mapping. The
    layout is read from ``ds``: variables and their dims, sizes, chunks, times, a digest of
    every other coordinate, and the attributes but the request's
    (:data:`~corrdiff_xr.inference.request.SETTINGS_ATTR`).
    """
    first = next(iter(ds.data_vars.values()))
    layout = {
        "variables": {str(n): list(v.dims) for n, v in ds.data_vars.items()},
        "sizes": {str(d): int(n) for d, n in ds.sizes.items()},
        "chunks": {str(d): _chunking(c) for d, c in zip(first.dims, first.chunks or ())},
        "times": times_fingerprint(ds[TIME].values),
        "coords": {str(n): _values_digest(v) for n, v in ds.coords.items() if n != TIME},
        "attrs": {k: v for k, v in ds.attrs.items() if k != SETTINGS_ATTR},
    }
    return plain({"request": dict(request or {}), "store": layout})


def _short(value: object) -> str:
    if value is ABSENT:
        return "nothing"
    text = redact_text(json.dumps(value, default=str))  # a store of an older version may hold one
    return text if len(text) <= 48 else text[:45] + "..."


def _differences(found: object, identity: Mapping[str, Any]) -> list[str]:
    """``field: stored X, requested Y`` for each field of the identity record that differs.

    Fields of the request come first; the layout's are listed only when the requests agree
    (a changed seed also changes the layout's attributes: name the cause, not the echo).
    """
    if not isinstance(found, dict):
        return ["the identity record is missing or unreadable"]
    for section in ("request", "store"):
        diffs = differences(found.get(section), identity.get(section))
        if diffs:
            return [
                f"{section}.{k}: stored {_short(a)}, requested {_short(b)}" for k, a, b in diffs
            ]
    return []


def _stored_identity(path: Path) -> Any:
    """The identity record of our Zarr store or NetCDF file at ``path`` (None if absent)."""
    if path.is_dir():
        import zarr

        return zarr.open_group(str(path), mode="r").attrs.get(IDENTITY_ATTR)
    import netCDF4

    with netCDF4.Dataset(path) as nc:
        text = nc.getncattr(IDENTITY_ATTR) if IDENTITY_ATTR in nc.ncattrs() else None
    try:
        return None if text is None else json.loads(text)
    except ValueError:
        return None


def holds_request(
    path: str | os.PathLike,
    identity: Mapping[str, Any],
    *,
    kind: str = "generate",
    overwrite: bool = False,
    what: str = "output",
) -> bool:
    """Whether ``path`` already holds the output of this very request (so it is kept).

    False means ``path`` may be written: nothing is there (or an empty directory), or our
    ``kind`` output of another request and ``overwrite`` is set.

    Raises
    ------
    RequestMismatchError
        ``path`` holds our output of another request and ``overwrite`` is False; the message
        names the fields that differ.
    OutputExistsError
        ``path`` holds anything corrdiff_xr did not write as a ``kind`` output.
    """
    path = Path(path)
    if product_of(path) == kind:
        found = _stored_identity(path)
        if found == identity:
            return True
        if not overwrite:
            diffs = _differences(found, identity)
            more = f", and {len(diffs) - 6} more" if len(diffs) > 6 else ""
            command = what.startswith("--")  # e.g. "--zarr store"; a library call's: "Zarr store"
            option, flag = (
                (what.split()[0], "--overwrite") if command else ("path", "overwrite=True")
            )
            raise RequestMismatchError(
                f"{what} {path} holds the output of a different request ({len(diffs)} field(s) "
                f"differ: {'; '.join(diffs[:6])}{more}); pass {flag} to start again, or "
                f"choose another {option}"
            )
    check_output(path, kind=kind, overwrite=overwrite, what=what)  # never anything not ours
    return False


# -- the Zarr store ----------------------------------------------------------------------------


#: where a block lies in the store: ``{dim: slice}``
Region = dict[str, slice]
#: one block of a store: its chunk index and its region (``{dim: slice}``)
Block = tuple[tuple[int, ...], Region]


def _blocks(ds: xr.Dataset) -> list[Block]:
    """The common chunk grid of the data variables: (chunk index, {dim: slice}) per block."""
    first = next(iter(ds.data_vars.values()))
    dims = first.dims
    for name, var in ds.data_vars.items():
        if var.dims != dims or var.chunks != first.chunks:
            raise ValueError(
                f"variable {name!r} is not chunked like {first.name!r}; cannot write by blocks"
            )
    if first.chunks is None:
        raise ValueError(f"variable {first.name!r} is not chunked (dask); cannot write by blocks")
    bounds = [np.cumsum((0, *c)) for c in first.chunks]
    blocks: list[Block] = []
    for idx in itertools.product(*(range(len(b) - 1) for b in bounds)):
        region = {str(d): slice(int(b[i]), int(b[i + 1])) for d, b, i in zip(dims, bounds, idx)}
        blocks.append((idx, region))
    return blocks


def _block_id(block: Region) -> str:
    return "_".join(f"{d}{s.start}-{s.stop}" for d, s in block.items())


def block_ids(ds: xr.Dataset) -> list[str]:
    """The completion-record name of every block a store of ``ds`` is written by.

    The blocks are the common chunk grid of ``ds``'s data variables (as :func:`write_zarr`
    writes them); a block is complete when its id is in :func:`progress`. So a reader can
    tell a finished store from one a crashed or running write left, e.g.
    ``set(block_ids(xr.open_zarr(path))) - progress(path)``.

    Raises
    ------
    ValueError
        The data variables are not chunked alike (or not chunked).
    """
    return [_block_id(block) for _, block in _blocks(ds)]


def progress_dir(store: str | os.PathLike) -> Path:
    """Directory of the completion records of ``store``."""
    path = Path(store)
    return path.with_name(path.name + PROGRESS_SUFFIX)


def progress(store: str | os.PathLike) -> set[str]:
    """Ids of the blocks of ``store`` recorded as complete."""
    path = progress_dir(store)
    return (
        {p.name for p in path.iterdir() if not p.name.startswith(".")} if path.exists() else set()
    )


def _check_records(store: Path, kind: str) -> None:
    """Refuse a ``<store>.progress`` that is not our record directory (never deleted)."""
    records = progress_dir(store)
    if not os.path.lexists(records):
        return
    ours = (
        records.is_dir()
        and not records.is_symlink()
        and (product_of(records) == f"{kind}{PROGRESS_SUFFIX}" or not any(records.iterdir()))
    )
    if not ours:
        raise OutputExistsError(
            f"completion-record directory {records} of {store} exists but corrdiff-xr did not "
            "make it; refusing to touch it (move it away, or choose another path)"
        )


def _initialise(ds: xr.Dataset, store: Path, identity: dict[str, Any], kind: str) -> None:
    """Metadata, coordinates and identity into a hidden sibling, then renamed into place."""
    # every variable is chunked (_blocks refused the others)
    encoding = {n: {"chunks": [c[0] for c in v.chunks or ()]} for n, v in ds.data_vars.items()}
    # one-chunk placeholders: to_zarr(compute=False) then optimises a task per variable, not
    # the blocks' whole graph (minutes at 10**5 time steps); coordinates are real values
    empty = {n: da.empty(v.shape, dtype=v.dtype, chunks=-1) for n, v in ds.data_vars.items()}
    template = ds.copy(data=empty)
    template.attrs.pop(SETTINGS_ATTR, None)  # the request's: in the identity record
    template.attrs.update({IDENTITY_ATTR: identity, PRODUCT_ATTR: kind})
    records = progress_dir(store)
    with atomic_path(store) as staged:
        template.to_zarr(staged, mode="w-", compute=False, encoding=encoding, consolidated=False)
        if os.path.lexists(records):
            # records describe the store at the path, which is about to be replaced (or was
            # deleted by hand): drop them first, so none outlives its store
            discard(records)


def _open_records(store: Path, kind: str) -> None:
    """Create the (marked) record directory atomically, or clean partial records in it."""
    records = progress_dir(store)
    if records.is_dir() and product_of(records) == f"{kind}{PROGRESS_SUFFIX}":
        remove_stale(records)
        return
    with atomic_path(records) as staged:
        staged.mkdir()
        mark_directory(staged, f"{kind}{PROGRESS_SUFFIX}")


def _remove_partials(store: Path) -> None:
    for root, _, files in os.walk(store):
        for name in files:
            if _ZARR_PARTIAL.search(name):
                os.unlink(os.path.join(root, name))


def _input_change(
    ds: xr.Dataset,
    store: Path,
    blocks: list[Block],
    fingerprints: Fingerprints,
    client: Client | None,
    what: str,
) -> Exception | None:
    """The error naming an input that changed since the complete blocks read it, else None."""
    done = progress(store)
    recorded = {}
    for _, block in blocks if done and fingerprints.active else ():
        bid = _block_id(block)  # records of older versions are empty: nothing to check
        record = (progress_dir(store) / bid).read_bytes() if bid in done else b""
        if record and (found := json.loads(record).get("inputs")):
            recorded[block[TIME].start, block[TIME].stop] = found
    if not recorded:
        return None
    keys = sorted(recorded)
    current = dict(zip(keys, fingerprints.compute(keys, client)))
    return changed_inputs(recorded, current, ds[TIME].values, what=what)


def _run_blocks(
    ds: xr.Dataset,
    store: Path,
    blocks: list[Block],
    fingerprints: Fingerprints,
    key: str,
    client: Client | None,
) -> int:
    """Compute and write the blocks not recorded complete; how many were written."""
    done = progress(store)
    with paused_gc():
        todo = [(idx, block, _block_id(block)) for idx, block in blocks]
        todo = [t for t in todo if t[2] not in done]
        # time first: a time chunk's blocks (members, tiles) share inputs and a whole-domain mean
        todo.sort(key=lambda t: (t[1][TIME].start, t[0]))
    return write_blocks(ds, store, progress_dir(store), todo, fingerprints, key, client)


def _prepare(
    ds: xr.Dataset, store: Path, identity: dict[str, Any], *, kind: str, overwrite: bool, what: str
) -> None:
    """Make ``store`` hold this request's metadata and records: resume, start, or refuse."""
    remove_leftovers(store)
    remove_leftovers(progress_dir(store))
    _check_records(store, kind)
    if holds_request(store, identity, kind=kind, overwrite=overwrite, what=what):
        _remove_partials(store)  # of chunk writes a kill interrupted (their blocks rerun)
    else:
        _initialise(ds, store, identity, kind)
    _open_records(store, kind)


def write_zarr(
    ds: xr.Dataset,
    store: str | os.PathLike,
    *,
    request: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    client: Client | None = None,
    kind: str = "generate",
    what: str = "Zarr store",
    inputs: xr.Dataset | None = None,
) -> dict[str, int]:
    """Write ``ds`` to a local Zarr ``store``, resuming an interrupted write of the same request.

    The store is locked while written (:func:`corrdiff_xr._lock.output_lock`).

    Parameters
    ----------
    ds
        Lazy Dataset from :func:`corrdiff_xr.inference.downscale` (all data variables chunked
        alike).
    store
        Directory of the Zarr store.
    request
        What produced ``ds`` (JSON-able), kept in the identity record with the layout
        (:func:`store_identity`); a store of a different request is not resumed. None: the
        :func:`~corrdiff_xr.inference.request.request_identity` of a ``downscale`` result
        (without its data source), nothing for another Dataset.
    overwrite
        Replace our store of a different request (otherwise an error naming the fields that
        differ), or of this request whose ``inputs`` changed. Never replaces anything else.
    client
        A dask.distributed Client to run on; None uses the current dask scheduler.
    kind, what
        The product marker written into the store, and how messages name the store.
    inputs
        What the blocks read (inputs with the output's times, static fields); their
        fingerprints are recorded and checked on resume (:mod:`.fingerprint`). None: not.

    Returns
    -------
    dict
        ``{"blocks": total, "written": computed now, "skipped": already complete}``.

    Raises
    ------
    RequestMismatchError, OutputExistsError
        See :func:`holds_request`; also for a ``<store>.progress`` that is not ours.
    InputChangedError
        ``inputs`` changed since the store was started, and ``overwrite`` is False.
    OutputLockedError
        Another live run is writing ``store``.
    """
    store = Path(store)
    with paused_gc():
        blocks = _blocks(ds)
    # lazy coordinates (lat/lon) are loaded once, for the identity and the store's template
    ds = ds.assign_coords({k: v.load() for k, v in ds.coords.items() if v.chunks})
    if request is None and SETTINGS_ATTR in ds.attrs:
        request = request_identity(ds)
    identity = store_identity(ds, request)
    key = digest(json.dumps(identity, sort_keys=True).encode())
    if inputs is not None and inputs.sizes.get(TIME, ds.sizes[TIME]) != ds.sizes[TIME]:
        raise ValueError(f"inputs have {inputs.sizes[TIME]} times, the output {ds.sizes[TIME]}")
    fingerprints = input_fingerprints(inputs) if inputs is not None else Fingerprints()
    with output_lock(store, what=f"{what} {store}"):
        _prepare(ds, store, identity, kind=kind, overwrite=overwrite, what=what)
        changed = _input_change(ds, store, blocks, fingerprints, client, f"{what} {store}")
        if changed is not None:
            if not overwrite:
                raise changed
            _initialise(ds, store, identity, kind)  # start again from the input as it is now
            _open_records(store, kind)
        written = _run_blocks(ds, store, blocks, fingerprints, key, client)
        _consolidate(str(store))  # every block is in: readers then open it with one metadata read
    return {"blocks": len(blocks), "written": written, "skipped": len(blocks) - written}


def _consolidate(store: str) -> None:
    import zarr

    with warnings.catch_warnings():
        # consolidated metadata is a zarr-python extension to v3; it saves remote reads
        warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
        zarr.consolidate_metadata(store)  # one atomic rewrite of the root zarr.json
