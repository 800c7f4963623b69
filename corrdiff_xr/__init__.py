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

from corrdiff_xr import accessors as _accessors  # noqa: F401  (registers ds.corrdiff)
from corrdiff_xr._version import __version__

__all__ = ["__version__"]
