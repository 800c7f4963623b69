"""Data layer: the canonical layout, validation, regridding, statistics, pairs, synthetic data.

See :mod:`corrdiff_xr.data.layout` for the layout every other module relies on. The usual
entry point is :func:`open_source` (a ``catalog:NAME/ENTRY``, a Zarr path or URL, or data
already open; :mod:`corrdiff_xr.data.source`), which returns a lazy, validated
:class:`DownscalingData`; :func:`open_pair` opens a canonical store or Dataset, and
:func:`open_archives` pairs separate native archives (:mod:`corrdiff_xr.data.archives`).
"""

from __future__ import annotations

import importlib
from typing import Any

from corrdiff_xr.data.layout import (
    CoordinateError,
    CoverageError,
    DataError,
    DimensionError,
    DTypeError,
    EmptySelectionError,
    MetadataError,
    MissingValueError,
    MissingVariableError,
    NameClashError,
    Roles,
    StatsError,
    StoreError,
    TimeAxisError,
    combine,
    roles,
)
from corrdiff_xr.data.pair import (
    SUPPORTED_PROTOCOLS,
    DownscalingData,
    open_dataset,
    open_pair,
)
from corrdiff_xr.data.regrid import BilinearWeights, bilinear_weights, regrid
from corrdiff_xr.data.source import SourceError, catalog_spec, open_source
from corrdiff_xr.data.stats import (
    check_stats,
    compute_stats,
    read_stats,
    stats_dataset,
    stats_to_dict,
    write_stats,
)
from corrdiff_xr.data.validate import select_roles, validate
from corrdiff_xr.data.write import write_dataset

# names from sibling modules imported on first use (heavier readers and converters)
_LAZY: dict[str, str] = {
    **dict.fromkeys(
        ["open_pp", "read_pp", "PPFormatError", "rotated_to_geographic"],
        "corrdiff_xr.data.sources.pp",
    ),
    **dict.fromkeys(["uk_hires_dataset", "sample_path"], "corrdiff_xr.data.sources.ukhires"),
    **dict.fromkeys(["open_archives"], "corrdiff_xr.data.archives"),
    **dict.fromkeys(["package_pair"], "corrdiff_xr.data.package_pair"),
    **dict.fromkeys(["adopt"], "corrdiff_xr.data.sources.native"),
    **dict.fromkeys(["native_archives"], "corrdiff_xr.data.sources.native_example"),
    **dict.fromkeys(
        ["gaussian_random_field", "synthetic_dataset"], "corrdiff_xr.data.sources.synthetic"
    ),
    **dict.fromkeys(
        [
            "ConversionError",
            "cwb_to_canonical",
            "hrrr_mini_to_canonical",
        ],
        "corrdiff_xr.data.sources.reference",
    ),
    **dict.fromkeys(
        ["CatalogError", "open_catalog", "open_entry", "list_catalogs"],
        "corrdiff_xr.data.catalog",
    ),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'corrdiff_xr.data' has no attribute '{name}'")


__all__ = [
    "SUPPORTED_PROTOCOLS",
    "BilinearWeights",
    "CatalogError",
    "ConversionError",
    "CoordinateError",
    "CoverageError",
    "DTypeError",
    "DataError",
    "DimensionError",
    "DownscalingData",
    "EmptySelectionError",
    "MetadataError",
    "MissingValueError",
    "MissingVariableError",
    "NameClashError",
    "PPFormatError",
    "Roles",
    "SourceError",
    "StatsError",
    "StoreError",
    "TimeAxisError",
    "adopt",
    "bilinear_weights",
    "catalog_spec",
    "check_stats",
    "combine",
    "compute_stats",
    "cwb_to_canonical",
    "gaussian_random_field",
    "hrrr_mini_to_canonical",
    "list_catalogs",
    "native_archives",
    "open_archives",
    "open_catalog",
    "open_dataset",
    "open_entry",
    "open_pair",
    "open_pp",
    "open_source",
    "package_pair",
    "read_pp",
    "read_stats",
    "regrid",
    "roles",
    "rotated_to_geographic",
    "sample_path",
    "select_roles",
    "stats_dataset",
    "stats_to_dict",
    "synthetic_dataset",
    "uk_hires_dataset",
    "validate",
    "write_dataset",
    "write_stats",
]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
