"""Lazy CorrDiff downscaling over Dask blocks and its resumable writers.

* :mod:`~corrdiff_xr.inference.downscaling`: :func:`downscale` (``ds.corrdiff.downscale``),
  the lazy Dataset of members, means or residuals;
* :mod:`~corrdiff_xr.inference.graph` and :mod:`~corrdiff_xr.inference.block`: one task per
  output block, sampling the patches of the global lattice that touch it;
* :mod:`~corrdiff_xr.inference.cache` and :mod:`~corrdiff_xr.inference.plugin`: the model
  loaded once per worker process, tasks carrying only a small token;
* :mod:`~corrdiff_xr.inference.store`: :func:`write_zarr` (block-by-block, crash-safe,
  resumable, with the request's identity: :mod:`~corrdiff_xr.inference.request`'s
  :func:`request_identity`, the same for a library call and ``corrdiff-xr generate``);
* :mod:`~corrdiff_xr.inference.netcdf`: :func:`write_reference_netcdf` (PhysicsNeMo's layout).
"""

from __future__ import annotations

from corrdiff_xr.inference.downscaling import downscale, model_header
from corrdiff_xr.inference.netcdf import write_reference_netcdf
from corrdiff_xr.inference.request import request_identity
from corrdiff_xr.inference.store import write_zarr

__all__ = ["downscale", "model_header", "request_identity", "write_reference_netcdf", "write_zarr"]
