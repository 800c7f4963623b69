"""kerchunk references: a JSON file mapping Zarr keys to byte ranges of other files (NetCDF,
GRIB, TIFF), read as a Zarr store through fsspec's ``reference://`` filesystem.

Given as ``{"url": "refs.json", "engine": "kerchunk"}`` (or fsspec's spelling, ``url:
"reference://"`` with ``storage_options={"fo": "refs.json", "remote_options": {...}}``).
``storage_options`` open the JSON and, when they share its protocol, its targets.

A reference is a list of more URLs, and a byte range of any file reads as an array: before
anything is opened every target is checked. Targets use the protocols a store URL may use,
with no fsspec chains (``::``), and a *remote* reference may not point at local files
(``file://``, plain paths, ``memory://``): whoever wrote it is not on this machine. An
untrusted catalog may not choose a local reference either (``_catalog_trust``), so a catalog
reference reads only remote data, where the catalog could point directly. Jinja templates
beyond plain ``{{name}}`` substitution and ``gen`` sections are refused (expand them with
kerchunk first): they would expand without bound.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import xarray as xr

from corrdiff_xr._redact import redact_url
from corrdiff_xr.data import integrity
from corrdiff_xr.data.layout import StoreError
from corrdiff_xr.data.pair import SUPPORTED_PROTOCOLS
from corrdiff_xr.data.sources.formats._common import (
    local_path,
    protocol,
    read_errors,
    with_loaded_coords,
)

_LOCAL = ("", "file", "local", "memory")
_TEMPLATE = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def _split(
    url: str, storage_options: Mapping[str, Any] | None, what: str
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(reference URL, its options, its targets' options) from either spelling."""
    options = dict(storage_options or {})
    if not url.startswith("reference://"):
        return url, options, options
    ref = options.pop("fo", None)
    if not isinstance(ref, str):
        raise StoreError(f"{what}: url 'reference://' needs storage_options fo=<JSON path or URL>")
    unknown = sorted(set(options) - {"target_options", "remote_options", "remote_protocol"})
    if unknown:
        raise StoreError(f"{what}: storage option(s) {unknown} are not read for 'reference://'; "
                         "give target_options (the JSON) and remote_options (its targets)")  # fmt: skip
    return ref, dict(options.get("target_options") or {}), dict(options.get("remote_options") or {})


def _flat(doc: Any, where: str) -> dict[str, Any]:
    """Version 0 or 1 references as one flat ``{key: value}``, plain templates filled."""
    if not isinstance(doc, Mapping):
        raise StoreError(f"{where}: not a kerchunk reference (a JSON object)")
    if doc.get("version") != 1:
        return dict(doc)
    if doc.get("gen"):
        raise StoreError(f"{where}: 'gen' references are not read; expand them with kerchunk")
    templates = {str(k): str(v) for k, v in (doc.get("templates") or {}).items()}
    out = {}
    for key, value in (doc.get("refs") or {}).items():
        if isinstance(value, list) and value and isinstance(value[0], str) and "{" in value[0]:
            url = _TEMPLATE.sub(lambda m: templates.get(m[1], m[0]), value[0])
            if "{{" in url or "{%" in url:
                raise StoreError(f"{where}: reference {key!r} has a template beyond "
                                 "{{name}} substitution; expand it with kerchunk")  # fmt: skip
            value = [url, *value[1:]]
        out[key] = value
    return out


def _check_targets(refs: Mapping[str, Any], local_ref: bool, where: str) -> set[str]:
    """The targets' protocols, each allowed (see the module docstring)."""
    found = set()
    for key, value in refs.items():
        if not (isinstance(value, list) and value and isinstance(value[0], str)):
            continue  # inline data
        target = value[0]
        proto = protocol(target)
        if "::" in target or (proto not in _LOCAL and proto not in SUPPORTED_PROTOCOLS):
            raise StoreError(f"{where}: reference {key!r} points at '{redact_url(target)}', "
                             "a chained or unsupported protocol")  # fmt: skip
        if proto in _LOCAL and not local_ref:
            raise StoreError(
                f"{where}: reference {key!r} points at the local file '{target}', but the "
                "reference is remote; a remote reference may only point at remote data"
            )
        found.add(proto or "file")
    return found


def open_archive(
    url: str,
    *,
    engine: str,
    storage_options: Mapping[str, Any] | None,
    backend_kwargs: Mapping[str, Any],
    what: str,
) -> xr.Dataset:
    """The Zarr store a kerchunk JSON reference describes, lazily, its targets checked."""
    ref, ref_options, target_options = _split(url, storage_options, what)
    local = local_path(ref, what, "kerchunk reference") is not None
    where = f"{what}: kerchunk reference '{redact_url(ref)}'"
    with read_errors(ref, what, "kerchunk reference"):
        import fsspec

        with fsspec.open(ref, mode="rt", **({} if local else ref_options)) as f:
            doc = json.load(f)
    refs = _flat(doc, where)
    protocols = _check_targets(refs, local, where)
    remote = next(iter(protocols)) if len(protocols) == 1 else None
    same = remote is not None and remote == (protocol(ref) or "file")
    shared = same or url.startswith("reference://")
    targets = dict(target_options) if shared else {}
    if remote not in (None, *_LOCAL):  # zarr reads through async filesystems
        targets["asynchronous"] = True
    options = {"fo": refs, "remote_protocol": remote, "remote_options": targets}
    with read_errors(ref, what, "kerchunk reference"), integrity.guarded_codecs():
        ds = xr.open_zarr("reference://", storage_options=options, consolidated=False, chunks={})
        return with_loaded_coords(ds)
