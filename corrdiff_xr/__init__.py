"""corrdiff_xr: a Zarr/Dask-native CorrDiff for km-scale atmospheric downscaling.

CorrDiff (Mardani et al., arXiv 2309.15214) predicts the conditional mean of high-resolution
fields with a regression UNet and generates the residual with an EDM diffusion model, so each
ensemble member is ``mean + residual``.

How data flows, one road each way::

    catalog entry / URL -> data.open_pair -> DownscalingData (lazy, validated)
        training:  loader (chunk-aligned blocks, patches) -> codec -> train loop -> checkpoint
        inference: ds.corrdiff.downscale(model) -> per-block Dask tasks -> lazy Dataset -> Zarr
        scoring:   ds.corrdiff.crps(truth) ... -> metrics Dataset -> plots

Importing this package registers the ``.corrdiff`` accessor on xarray objects; torch and the
heavy modules load only when a method needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

from corrdiff_xr import accessors as _accessors  # noqa: F401  (registers ds.corrdiff, da.corrdiff)
from corrdiff_xr._version import __version__

#: the public API, ``cx.<name>``: where each name lives (imported on first use, so that
#: ``import corrdiff_xr`` stays light and loads no torch)
API = {
    "open_archives": "corrdiff_xr.data.archives",
    "open_catalog": "corrdiff_xr.data.catalog",
    "open_source": "corrdiff_xr.data.source",
    "open_pair": "corrdiff_xr.data.pair",
    "DownscalingData": "corrdiff_xr.data.pair",
    "CorrDiff": "corrdiff_xr.model.core",
    "import_mdlus": "corrdiff_xr.model.mdlus",
    "open_package": "corrdiff_xr.model.packages",
    "export_package": "corrdiff_xr.model.packages",
    "train": "corrdiff_xr.training.loop",
    "load_run_config": "corrdiff_xr.training",
    "downscale": "corrdiff_xr.inference.downscaling",
    "calibrate": "corrdiff_xr.inference.calibrate",
    "write_zarr": "corrdiff_xr.inference",
    "request_identity": "corrdiff_xr.inference",
    "write_reference_netcdf": "corrdiff_xr.inference",
    "summary": "corrdiff_xr.scoring",
}

__all__ = ["API", "__version__", *sorted(API)]


def __getattr__(name: str) -> Any:
    if name not in API:
        raise AttributeError(f"module 'corrdiff_xr' has no attribute {name!r}")
    value = getattr(importlib.import_module(API[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(API))
