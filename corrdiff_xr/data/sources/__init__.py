"""Adapters from outside formats to the canonical layout (see :mod:`corrdiff_xr.data.layout`).

* :mod:`~corrdiff_xr.data.sources.synthetic`: the synthetic generator behind the demo;
* :mod:`~corrdiff_xr.data.sources.pp` and :mod:`~corrdiff_xr.data.sources.ukhires`: our Met
  Office PP reader and the UK 1.5 km sample built from ``iris-sample-data``;
* :mod:`~corrdiff_xr.data.sources.reference`: the reference implementation's HRRR-Mini NetCDF
  and CWB Zarr layouts.

The data core (layout, validate, pair, regrid, stats, catalog) never imports these modules at
import time.
"""
