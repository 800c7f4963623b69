"""What every format's opener shares: local paths, protocols, loaded coordinates, errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import xarray as xr

from corrdiff_xr._redact import redact_text, redact_url
from corrdiff_xr.data.layout import StoreError
from corrdiff_xr.data.pair import SUPPORTED_PROTOCOLS


def protocol(url: str) -> str:
    """``url``'s fsspec protocol; ``""`` for a plain path."""
    return url.split("://", 1)[0].lower() if "://" in url else ""


def local_path(url: str, what: str, kind: str) -> Path | None:
    """The local file ``url`` names (refused if missing), or None for a remote URL; fsspec
    chains and unknown protocols are refused as for a Zarr URL."""
    proto = protocol(url)
    if "::" in url or (proto and proto not in SUPPORTED_PROTOCOLS):
        raise StoreError(
            f"{what}: cannot read {kind} '{redact_url(url)}': protocol not supported here "
            f"(supported: {', '.join(p + '://' for p in SUPPORTED_PROTOCOLS)} or a local path)"
        )
    if proto not in ("", "file"):
        return None
    path = Path(url[len("file://") :] if proto == "file" else url).expanduser()
    if not path.exists():
        raise StoreError(f"{what}: {kind} '{redact_url(url)}' does not exist")
    return path


def remote_only_here(url: str, what: str, engine: str, kind: str) -> Path:
    """The local path of a file that ``engine`` reads only from local disk."""
    path = local_path(url, what, kind)
    if path is None:
        raise StoreError(
            f"{what}: engine {engine!r} reads local files only, not '{redact_url(url)}'; copy "
            "it to local disk, or open it through a kerchunk reference (engine 'kerchunk')"
        )
    return path


def with_loaded_coords(ds: xr.Dataset) -> xr.Dataset:
    """Non-index coordinates read into memory (small, and needed to validate and regrid)."""
    coords = {
        k: xr.Variable(ds[k].dims, np.asarray(ds[k].values), ds[k].attrs)
        for k in ds.coords
        if k not in ds.indexes
    }
    from corrdiff_xr._outputs import PRODUCT_ATTR

    out = ds.assign_coords(coords)
    out.attrs.pop(PRODUCT_ATTR, None)  # a copy of our output must not look like one
    return out


@contextlib.contextmanager
def read_errors(url: str, what: str, kind: str, hint: str = "") -> Iterator[None]:
    """Library errors while opening, as one StoreError naming the archive (URL redacted)."""
    try:
        yield
    except (StoreError, ImportError):
        raise
    except Exception as err:  # h5py, eccodes, fsspec and icechunk raise many types
        shown = redact_text(f"{type(err).__name__}: {err}")
        raise StoreError(f"{what}: cannot read {kind} '{redact_url(url)}': {shown}{hint}") from None
