"""Catalog readers for native archives and for pairs of them (see :mod:`corrdiff_xr.data.archives`).

Two intake readers, named in catalogs as ``corrdiff_xr.data.catalog:ArchiveReader`` and
``corrdiff_xr.data.catalog:ArchivePairReader``:

* :class:`ArchiveReader` opens one native Zarr archive lazily, as it is (an
  :class:`xarray.Dataset`; its ``select`` applied), for browsing and for pairs to refer to;
* :class:`ArchivePairReader` pairs a ``coarse``, a ``fine`` and optional ``static``
  archives into a validated, lazy DownscalingData with
  :func:`~corrdiff_xr.data.archives.open_archives` (``time``, ``match``, ``tolerance``,
  ``window``, ``regrid`` are its options; ``fine_window`` is ``window`` under the name a catalog
  uses when its user parameter is ``window``, since intake takes a kwarg named like a parameter
  as that parameter's value; ``coarse`` may list several archives on one grid). Each
  archive is a mapping with ``url``, ``storage_options``, ``engine``, ``backend_kwargs``
  (:mod:`corrdiff_xr.data.sources.formats`), ``variables`` and ``select``, or ``{entry: NAME, ...}``: the arguments of the catalog's
  ArchiveReader entry NAME (opened with the same user parameters), updated by the other keys
  given here, so one archive entry serves several pairs (say, different variable maps).

An entry referenced this way is resolved by :func:`resolve_archive_entries`, called by
:func:`corrdiff_xr.data.catalog.open_entry` before reading; intake's own ``{data(NAME)}``
template would instantiate anything and is refused in untrusted catalogs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from intake.readers.entry import Catalog
from intake.readers.readers import BaseReader

if TYPE_CHECKING:
    import xarray as xr

    from corrdiff_xr.data.pair import DownscalingData
    from corrdiff_xr.data.times import TimeMatch

__all__ = ["ArchivePairReader", "ArchiveReader", "resolve_archive_entries"]

_ARCHIVE_KEYS = ("coarse", "fine", "static")


class ArchiveReader(BaseReader):
    """One native archive (Zarr, NetCDF, GRIB, kerchunk, Icechunk: ``engine``), opened
    lazily as an xarray Dataset."""

    output_instance = "xarray:Dataset"
    imports: ClassVar[set[str]] = {"xarray", "zarr", "fsspec"}

    def _read(
        self,
        url: str,
        storage_options: dict | None = None,
        select: dict | None = None,
        variables: dict | None = None,
        engine: str | None = None,
        backend_kwargs: dict | None = None,
    ) -> xr.Dataset:
        from corrdiff_xr.data.archive_spec import given_options
        from corrdiff_xr.data.sources.formats import open_store

        ds = open_store(
            url, engine=engine or None, backend_kwargs=given_options(backend_kwargs),
            storage_options=given_options(storage_options), what="archive",
        )  # fmt: skip
        if variables:
            ds = ds[list(variables)]
        return ds.sel(select) if select else ds


class ArchivePairReader(BaseReader):
    """A downscaling pair of native archives (coarse, fine, static) as a DownscalingData."""

    output_instance = "corrdiff_xr.data:DownscalingData"
    imports: ClassVar[set[str]] = {"xarray", "zarr", "fsspec"}

    def _read(
        self,
        coarse: dict | list,
        fine: dict,
        static: list | dict | None = None,
        time: dict | None = None,
        match: TimeMatch = "exact",
        tolerance: str | None = None,
        window: dict | None = None,
        regrid: str = "bilinear",
        fine_window: dict | None = None,
    ) -> DownscalingData:
        from corrdiff_xr.data.archives import open_archives
        from corrdiff_xr.data.layout import EmptySelectionError

        if _unset(window) and _unset(fine_window):
            raise EmptySelectionError("window and fine_window are one option; give one of them")
        window = _unset(window) or _unset(fine_window)

        statics = static if isinstance(static, list) else [static] if static else []
        statics = [s for s in statics if not isinstance(s, Mapping) or s.get("url") != ""]
        return open_archives(
            coarse, fine, statics, time=_unset(time), match=match,
            tolerance=tolerance or None, window=window, regrid=regrid or "bilinear",
        )  # fmt: skip


def _unset(value: Any) -> Any:
    """None for an empty mapping or one whose values are all unset ("" or None)."""
    if isinstance(value, Mapping):
        from corrdiff_xr.data.archive_spec import given_options

        return given_options(value)
    return value


def resolve_archive_entries(
    cat: Catalog,
    params: Mapping[str, Any],
    reader: BaseReader,
    where: str,
    *,
    error: type[Exception],
) -> None:
    """Replace ``{entry: NAME, ...}`` archives of a pair reader by NAME's arguments, in place.

    Raises
    ------
    error
        NAME is not an entry of the catalog, or not an ArchiveReader entry.
    """
    if not isinstance(reader, ArchivePairReader):
        return
    for key in _ARCHIVE_KEYS:
        value = reader.kwargs.get(key)
        items = value if isinstance(value, list) else [value]
        resolved = [_resolve(cat, params, item, f"{where}, {key}", error) for item in items]
        if value is not None:
            reader.kwargs[key] = resolved if isinstance(value, list) else resolved[0]


def _resolve(cat: Catalog, params: Mapping[str, Any], item: Any, where: str, error: type) -> Any:
    if not isinstance(item, Mapping) or "entry" not in item:
        return item
    from corrdiff_xr.data.archive_spec import check_keys
    from corrdiff_xr.data.layout import DataError

    name = item["entry"]
    if name not in cat.entries:
        raise error(f"{where}: no entry {name!r} in the catalog; entries: {sorted(cat.entries)}")
    ref = cat(**params)[name]
    if not isinstance(ref, ArchiveReader):
        raise error(
            f"{where}: entry {name!r} is a {type(ref).__name__}, not an ArchiveReader entry; a pair "
            "refers only to archive entries"
        )
    # a typo beside ``entry:`` (``varibles``) would otherwise be dropped with the rest
    known = ("url", "storage_options", "variables", "select", "engine", "backend_kwargs")
    try:
        check_keys(item, ("entry", *known), where)
        check_keys(ref.kwargs, known, f"{where}, entry {name!r}")
    except DataError as err:
        raise error(str(err)) from None
    return {**ref.kwargs, **{k: v for k, v in item.items() if k != "entry"}}
