"""One opener for every command: a data source, whatever its form, to a lazy DownscalingData.

:func:`open_source` is the one road from what a user names (a training config's
``data.source``, ``generate --data``, ``score --truth``, the demo) to a validated, lazy
:class:`~corrdiff_xr.data.DownscalingData`. A source is one of

* ``catalog:NAME/ENTRY``: an entry of an intake catalog, NAME a bundled catalog (``demo``,
  ``samples``, ``cloud``) or the path of a catalog YAML file (the entry is what follows the
  last ``/``), opened by :func:`corrdiff_xr.data.catalog.open_entry` with the user
  parameters ``params``. Trust stays the user's alone (:mod:`corrdiff_xr.data.catalog`):
  ``params`` may never hold ``trust``, since a shared config file or command line would
  then opt a catalog in; list a trusted catalog in ``$CORRDIFF_XR_TRUSTED_CATALOGS``.
* a Zarr store path or fsspec URL, opened by :func:`corrdiff_xr.data.open_pair` with
  ``storage_options``;
* a :class:`DownscalingData` (returned as it is, or re-selected when names are given) or an
  :class:`xarray.Dataset` in the canonical layout (validated).

Whatever a catalog entry's reader returns goes through the same last step as an object
passed in directly, so a new kind of entry (one reading a pair of native archives, say)
needs a reader in the catalog module and nothing here. Options that do not apply to a form
are refused rather than ignored (``params`` outside a catalog, ``storage_options`` for a
catalog entry, whose fsspec options are its own parameters). Errors name the source, as the
caller calls it (``what``, e.g. ``--data`` or ``data.source``), with credentials redacted
(:mod:`corrdiff_xr._redact`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import xarray as xr

from corrdiff_xr._redact import redact_url
from corrdiff_xr.data.layout import DataError, StoreError
from corrdiff_xr.data.pair import DownscalingData, open_pair
from corrdiff_xr.errors import CorrDiffError

__all__ = ["CATALOG_PREFIX", "SourceError", "catalog_spec", "open_source"]

CATALOG_PREFIX = "catalog:"

Names = str | Sequence[str] | None


class _Roles(TypedDict):
    """The variables to keep, by role (None keeps every one)."""

    inputs: Names
    targets: Names
    static: Names


class SourceError(CorrDiffError, ValueError):
    """A data source that cannot be opened as given: malformed, or options that do not apply."""


def _shown(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return repr(redact_url(os.fspath(source)))
    return f"<{type(source).__name__}>"


def catalog_spec(source: object, *, what: str = "source") -> tuple[str, str] | None:
    """``(catalog, entry)`` of a ``catalog:NAME/ENTRY`` source; None for any other source.

    Raises
    ------
    SourceError
        ``source`` starts with ``catalog:`` but lacks the catalog or the entry.
    """
    if not isinstance(source, str) or not source.startswith(CATALOG_PREFIX):
        return None
    catalog, _, entry = source[len(CATALOG_PREFIX) :].rpartition("/")
    if not catalog or not entry:
        from corrdiff_xr.data.catalog import list_catalogs

        raise SourceError(
            f"{what} {_shown(source)} is not of the form catalog:NAME/ENTRY (NAME a bundled "
            f"catalog, one of {list_catalogs()}, or a catalog YAML path; ENTRY one of its "
            "entries), e.g. catalog:demo/demo_tiny"
        )
    return catalog, entry


def open_source(
    source: str | os.PathLike | xr.Dataset | DownscalingData,
    *,
    params: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    inputs: Names = None,
    targets: Names = None,
    static: Names = None,
    require_targets: bool = True,
    what: str = "source",
    params_what: str = "params",
) -> DownscalingData:
    """Open ``source`` (see the module docstring) as a validated, lazy DownscalingData.

    Parameters
    ----------
    source
        ``catalog:NAME/ENTRY``, a Zarr path or fsspec URL, a DownscalingData or a canonical
        :class:`xarray.Dataset`.
    params
        User parameters of a catalog entry (``cache_dir``, ``s3_url`` ...); never ``trust``.
    storage_options
        fsspec options of a Zarr path or URL (credentials, ``endpoint_url``).
    inputs, targets, static
        Variable names to keep by role; None keeps every variable of that role.
    require_targets
        False for inference-only data without targets.
    what, params_what
        How the caller names ``source`` and ``params`` in messages (``--data``,
        ``data.catalog_params`` ...).

    Returns
    -------
    DownscalingData
        Opening reads coordinates and metadata only, never array data (a catalog entry
        built into the cache on first use is the exception: building it computes it once).

    Raises
    ------
    SourceError
        A malformed ``catalog:`` spec, ``trust`` in ``params``, or options that do not apply.
    CatalogError, DataError
        From the catalog or the data checks; a data error names the source.
    """
    names = _Roles(inputs=inputs, targets=targets, static=static)
    where = f"{what} {_shown(source)}" if isinstance(source, (str, os.PathLike)) else what
    spec = catalog_spec(source, what=what)
    if spec is None:
        _check_options(source, params, storage_options, where, params_what)
    try:
        if spec is not None:
            opened = _open_entry(spec, params or {}, storage_options, where, params_what)
        elif isinstance(source, (str, os.PathLike)):
            return open_pair(source, storage_options=dict(storage_options or {}) or None,
                             require_targets=require_targets, **names)  # fmt: skip
        else:
            opened = source
        return _from_object(opened, names, require_targets, where)
    except StoreError:  # its message names the store already (redacted)
        raise
    except DataError as err:  # a layout check: say which source failed it
        raise _naming(err, where) from err


def _check_options(
    source: object,
    params: Mapping[str, Any] | None,
    storage_options: Mapping[str, Any] | None,
    where: str,
    params_what: str,
) -> None:
    """Refuse options that do not apply to a source that is not a catalog entry."""
    path = isinstance(source, (str, os.PathLike))
    if not path and not isinstance(source, (DownscalingData, xr.Dataset)):
        raise SourceError(
            f"{where} must be catalog:NAME/ENTRY, a Zarr path or URL, a DownscalingData or an "
            f"xarray.Dataset, got {type(source).__name__}"
        )
    if params:
        kind = "a Zarr store or URL" if path else f"open data ({type(source).__name__})"
        raise SourceError(
            f"{params_what} {sorted(params)} only apply to a catalog:NAME/ENTRY source, but "
            f"{where} is {kind}; remove {params_what}, or open a catalog entry that declares "
            "these parameters (fsspec options such as credentials are storage options)"
        )
    if storage_options and not path:
        raise SourceError(
            f"storage options {sorted(storage_options)} only apply to a Zarr path or URL, but "
            f"{where} is open data ({type(source).__name__}); remove them"
        )


def _open_entry(
    spec: tuple[str, str],
    params: Mapping[str, Any],
    storage_options: Mapping[str, Any] | None,
    where: str,
    params_what: str,
) -> object:
    from corrdiff_xr.data.catalog import TRUST_ENV, open_entry

    if "trust" in params:  # a shared config or command line must not opt a catalog in
        raise SourceError(
            f"{params_what}.trust: {where}: a catalog is trusted by its user only, never by "
            f"its parameters; to trust it, list its file in ${TRUST_ENV}"
        )
    if storage_options:
        raise SourceError(
            f"storage options {sorted(storage_options)} do not apply to {where}: a catalog "
            "entry takes fsspec options (credentials, endpoint_url) from its own user "
            f"parameters; pass them in {params_what}"
        )
    return open_entry(*spec, **params)


def _from_object(obj: object, names: _Roles, require_targets: bool, where: str) -> DownscalingData:
    """The last step of every form but a path: a DownscalingData or a canonical Dataset."""
    if isinstance(obj, DownscalingData):
        if all(v is None for v in names.values()) and (obj.targets or not require_targets):
            return obj
        # a re-selection keeps the stored statistics (of the variables kept)
        return open_pair(
            obj.dataset, stats=obj.stored_stats, require_targets=require_targets, **names
        )
    if isinstance(obj, xr.Dataset):
        return open_pair(obj, require_targets=require_targets, **names)
    # a trusted catalog's reader may return anything
    raise SourceError(
        f"{where} gave a {type(obj).__name__}, not a DownscalingData or a canonical xarray.Dataset"
    )


def _naming(err: DataError, where: str) -> DataError:
    """``err`` (same type) with ``where`` in front of its message."""
    try:
        return type(err)(f"{where}: {err}")
    except Exception:  # noqa: BLE001 - a subclass with another signature
        return DataError(f"{where}: {err}")
