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
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:  # the real types for type checkers; at run time each loads on first use
    from corrdiff_xr.data.archives import open_archives as open_archives
    from corrdiff_xr.data.catalog import open_catalog as open_catalog
    from corrdiff_xr.data.pair import DownscalingData as DownscalingData
    from corrdiff_xr.data.pair import open_pair as open_pair
    from corrdiff_xr.data.source import open_source as open_source
    from corrdiff_xr.inference import request_identity as request_identity
    from corrdiff_xr.inference import write_reference_netcdf as write_reference_netcdf
    from corrdiff_xr.inference import write_zarr as write_zarr
    from corrdiff_xr.inference.calibrate import calibrate as calibrate
    from corrdiff_xr.inference.downscaling import downscale as downscale
    from corrdiff_xr.model.core import CorrDiff as CorrDiff
    from corrdiff_xr.model.mdlus import import_mdlus as import_mdlus
    from corrdiff_xr.model.packages import export_package as export_package
    from corrdiff_xr.model.packages import open_package as open_package
    from corrdiff_xr.scoring import summary as summary
    from corrdiff_xr.training import load_run_config as load_run_config
    from corrdiff_xr.training.loop import train as train


def __getattr__(name: str) -> Any:
    if name not in API:
        raise AttributeError(f"module 'corrdiff_xr' has no attribute {name!r}")
    value = getattr(importlib.import_module(API[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(API))
