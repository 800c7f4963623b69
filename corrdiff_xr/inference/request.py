"""The request identity of a downscaling: what makes a written store resumable.

A store written by :func:`~corrdiff_xr.inference.store.write_zarr` records the request that
made it (:func:`request_identity`): the checkpoint (name, size and digest of its bytes), the
data source, the times and every sampling setting. Writing the same request again resumes
the store; any difference is refused, naming the fields that differ. ``corrdiff-xr
generate`` and a library call build this record with the same function, so both write
(and resume) the same store::

    ds = downscale(pair, "model.safetensors", members=4, patch=32)
    write_zarr(ds, "out.zarr", request=request_identity(ds, data="data.zarr"))

Design: :func:`~corrdiff_xr.inference.downscale` records what it was asked that its
Dataset does not show (the checkpoint's path, the patch settings as given, the device) in
one attribute, :data:`SETTINGS_ATTR`; the rest (members, seed, resolved sampler, batch size,
chunks, times) is read from the Dataset itself. So the settings are stated once, to
``downscale``, never a second time to the writer, and cannot disagree with what was
computed. What ``downscale`` cannot know is asked of the caller: the data's *source* (it
receives opened data). ``write_zarr(ds, path)`` without a ``request`` builds it from the
Dataset (``data`` then None: pass ``inputs=`` to have changed input data detected, or give
the request). The attribute is the request's, not the store's: it is left out of the
store's layout and attributes, so stores written before it existed still resume.

Limits: an in-memory model is recorded as the file ``downscale`` saved it to (known by its
bytes; its name differs from a checkpoint file's, so pass ``checkpoint=`` to match a
``generate`` store); xarray keeps attributes through most operations, so a Dataset derived
from a result (a member mean) still carries the request, and its layout tells the stores
apart.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from corrdiff_xr._identity import DIGEST, digest, file_digest, plain
from corrdiff_xr.dims import TIME

if TYPE_CHECKING:
    import xarray as xr

    from corrdiff_xr.config import PatchConfig
    from corrdiff_xr.inference.cache import ModelToken

__all__ = [
    "SETTINGS_ATTR",
    "checkpoint_identity",
    "data_identity",
    "device_kind",
    "downscale_attrs",
    "request_identity",
    "times_fingerprint",
]

#: attribute in which ``downscale`` records what it was asked (JSON; read by this module)
SETTINGS_ATTR = "corrdiff_settings"


def checkpoint_identity(path: str | os.PathLike) -> dict[str, Any]:
    """Name, size and digest of a checkpoint's bytes (of every file of a directory)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"model checkpoint {os.fspath(path)!r} does not exist")
    hexdigest, size = file_digest(path)
    return {"name": Path(path).name, "bytes": size, DIGEST: hexdigest}


def times_fingerprint(times: npt.ArrayLike) -> dict[str, Any]:
    """Count, first and last time and a digest of the times' nanoseconds (``to_ns``).

    A cftime axis also records its calendar: the same numbers are other dates in another
    calendar. A ``datetime64`` axis' record is the same as before cftime axes were known, so
    earlier stores still resume.
    """
    from corrdiff_xr.data.times import calendar_of, is_cftime, to_ns

    values = np.asarray(times)
    if not is_cftime(values):
        values = values.astype("datetime64[ns]")
    out = {
        "count": int(values.size),
        "first": str(values[0]) if values.size else None,
        "last": str(values[-1]) if values.size else None,
        DIGEST: digest(to_ns(values).tobytes()),
    }
    return {**out, "calendar": calendar_of(values)} if is_cftime(values) else out


def data_identity(
    source: str | os.PathLike | None,
    *,
    params: Mapping[str, Any] | None = None,
    name_map: Mapping[str, str] | None = None,
    regrid: str | None = None,
) -> dict[str, Any]:
    """The data source as a request records it, without its secrets.

    ``source`` is a Zarr path or URL, or ``catalog:NAME/ENTRY`` with the catalog's user
    ``params``; local paths are made absolute (a run from another directory matches) and a
    digest stands for any password or token (:func:`corrdiff_xr._redact.redact_record`).
    ``name_map`` and ``regrid``, when given, are the options that put the data on a
    package's grids. None: data without a source (in memory).
    """
    from corrdiff_xr._redact import redact_record
    from corrdiff_xr.data import catalog_spec

    def where(text: str) -> str:
        return text if "://" in text or not os.path.exists(text) else os.path.abspath(text)

    if source is None:
        record: dict[str, Any] = {"data": None}
    elif (spec := catalog_spec(os.fspath(source))) is not None:
        # --catalog NAME --entry E and --data catalog:NAME/E are one source, recorded alike
        params = dict(params or {})
        record = redact_record({"catalog": where(spec[0]), "entry": spec[1], "params": params})
    else:
        record = redact_record({"data": where(os.fspath(source))})
    package = {"name_map": name_map, "regrid": regrid}
    return {**record, **{k: v for k, v in package.items() if v}}


def device_kind(device: str | None, *, remote_workers: bool = False) -> str:
    """The device a request's blocks run on: the kind asked, else what the workers pick
    (this machine's choice, or each remote worker's own)."""
    if device:
        import torch

        return torch.device(device).type
    if remote_workers:
        return "auto (each worker: cuda if present, else cpu)"
    from corrdiff_xr.inference.cache import resolve_device

    return resolve_device(None)  # local workers see this machine's devices


def downscale_attrs(
    token: ModelToken,
    package: str | None,
    resolved: PatchConfig | None,
    patch: PatchConfig | int | tuple[int, int] | None,
    boundary: int | None,
    weights: str | None,
) -> dict[str, str]:
    """The attributes ``downscale`` adds for the request: the package's source
    (``corrdiff_package``, when the model is one) and :data:`SETTINGS_ATTR`.

    :data:`SETTINGS_ATTR` holds the checkpoint's path (the ``token``'s, or the package's when
    that is a local path), the device asked, and the patch settings: ``resolved`` is the
    PatchConfig ``downscale`` samples with (None: the whole domain), ``patch``, ``boundary``
    and ``weights`` its arguments. Without patches the boundary and weights are recorded as
    given (they play no part), as ``generate`` always has.
    """
    from corrdiff_xr.config import PatchConfig

    checkpoint = token.path
    if package is not None and os.path.exists(package):
        checkpoint = os.path.abspath(package)
    asked: dict[str, Any]
    if resolved is not None:
        asked = {
            "patch": None if resolved.shape is None else list(resolved.shape),
            "overlap": resolved.overlap,
            "boundary": resolved.boundary,
            "weights": resolved.weights,
            "noise": resolved.noise,
            "mean": resolved.mean,
        }
        if resolved.layout != "compact":  # left out at the default: earlier records match
            asked["layout"] = resolved.layout
    else:
        base = patch if isinstance(patch, PatchConfig) else PatchConfig()
        asked = {
            **dict.fromkeys(("patch", "overlap"), None),
            "boundary": base.boundary if boundary is None else int(boundary),
            "weights": weights or base.weights,
            **dict.fromkeys(("noise", "mean"), None),
        }
    settings = {"checkpoint": checkpoint, "device": token.device, "patch": asked}
    attrs = {} if package is None else {"corrdiff_package": package}
    return {**attrs, SETTINGS_ATTR: json.dumps(settings)}


def _settings(ds: xr.Dataset) -> dict[str, Any]:
    try:
        return json.loads(ds.attrs[SETTINGS_ATTR])
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"the Dataset has no readable {SETTINGS_ATTR!r} attribute, so it does not say how "
            "it was made; write the Dataset corrdiff_xr.inference.downscale returned (with "
            "its attributes), or pass request="
        ) from None


def request_identity(
    ds: xr.Dataset,
    *,
    data: str | os.PathLike | None = None,
    params: Mapping[str, Any] | None = None,
    name_map: Mapping[str, str] | None = None,
    regrid: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    remote_workers: bool = False,
) -> dict[str, Any]:
    """The request identity of ``ds``, a result of :func:`~corrdiff_xr.inference.downscale`.

    Equal to what ``corrdiff-xr generate`` records for the same request, in plain JSON values
    (as the store's record reads back).

    Parameters
    ----------
    ds
        The Dataset ``downscale`` returned (its :data:`SETTINGS_ATTR` and provenance
        attributes, chunks and times are read; time selections keep them).
    data, params, name_map, regrid
        The data's source as :func:`data_identity` records it (None: data without one).
    checkpoint
        The checkpoint to record (default: the one ``downscale`` was given, or the file it
        saved an in-memory model to).
    remote_workers
        The blocks run on workers of another machine, which pick their own device when
        ``downscale`` was given none.

    Raises
    ------
    ValueError
        ``ds`` lacks ``downscale``'s attributes.
    FileNotFoundError
        The checkpoint does not exist.
    """
    asked = _settings(ds)
    attrs = ds.attrs
    sampling = {
        "output": attrs["corrdiff_output"],
        "members": int(attrs["corrdiff_members"]),
        "seed": int(attrs["corrdiff_seed"]),
        "sampler": json.loads(attrs["corrdiff_sampler"]),  # resolved, steps included
        **asked["patch"],
        "batch_size": int(attrs["corrdiff_batch_size"]),
        "device": device_kind(asked["device"], remote_workers=remote_workers),
        "chunks": {str(d): int(c[0]) for d, c in ds.chunksizes.items()},
    }
    request = {
        "checkpoint": checkpoint_identity(checkpoint or asked["checkpoint"]),
        "data": data_identity(data, params=params, name_map=name_map, regrid=regrid),
        "times": times_fingerprint(ds[TIME].values),
        "sampling": sampling,
    }
    return plain(request)  # as the store's record reads it back
