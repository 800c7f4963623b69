"""Native archives: axes, bounds and grid mappings found from CF metadata (via cf-xarray)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from corrdiff_xr.data.layout import DimensionError
from corrdiff_xr.data.sources.native import _metadata_vars, adopt, find_axes

TIMES = pd.date_range("2001-01-01", periods=2, freq="6h")


def era5(lat_attrs=None, lon_attrs=None, time_attrs=None) -> xr.Dataset:
    """ERA5-like: descending latitude, 0..360 longitude, no standard names by default."""
    lat = np.arange(60.0, 44.0, -4.0)
    lon = np.arange(0.0, 360.0, 72.0)
    field = np.zeros((len(TIMES), len(lat), len(lon)), np.float32)
    return xr.Dataset(
        {"2m_temperature": (("time", "latitude", "longitude"), field, {"units": "K"})},
        coords={
            "time": ("time", TIMES, time_attrs or {}),
            "latitude": ("latitude", lat, {"units": "degrees_north"} if lat_attrs is None else lat_attrs),
            "longitude": ("longitude", lon, {"units": "degrees_east"} if lon_attrs is None else lon_attrs),
        },
    )  # fmt: skip


def test_era5_axes_come_from_units_and_datetimes():
    ds = era5()
    assert find_axes(ds, ds["2m_temperature"].dims, what="era5") == {
        "T": "time",
        "Y": "latitude",
        "X": "longitude",
    }


def test_axes_cf_xarray_knows_beyond_standard_names_are_found():
    # THREDDS' _CoordinateAxisType and UDUNITS' degreesN: CF readings cf-xarray knows
    ds = era5({"_CoordinateAxisType": "Lat"}, {"units": "degreesE"})
    ds = ds.rename(latitude="a", longitude="b")
    assert find_axes(ds, ds["2m_temperature"].dims, what="era5") == {
        "T": "time",
        "Y": "a",
        "X": "b",
    }


def test_an_explicit_axis_wins_over_a_geographic_reading():
    ds = era5({"units": "degrees_north", "axis": "X"}, {"units": "degrees_east", "axis": "Y"})
    axes = find_axes(ds, ds["2m_temperature"].dims, what="era5")
    assert (axes["Y"], axes["X"]) == ("longitude", "latitude")


def test_index_dims_spanned_by_2d_latitude_longitude_are_the_horizontal_axes():
    ny, nx = 3, 4
    lat, lon = np.meshgrid(np.linspace(40, 50, ny), np.linspace(0, 10, nx), indexing="ij")
    ds = xr.Dataset(
        {"t": (("time", "y", "x"), np.zeros((2, ny, nx)), {"units": "K"})},
        coords={
            "time": TIMES,
            "latitude": (("y", "x"), lat, {"standard_name": "latitude"}),
            "longitude": (("y", "x"), lon, {"units": "degrees_east"}),
        },
    )
    assert find_axes(ds, ("time", "y", "x"), what="grib") == {"T": "time", "Y": "y", "X": "x"}


def test_missing_and_doubled_axes_name_the_fix_in_one_line():
    ds = era5(lat_attrs={})
    with pytest.raises(DimensionError, match=r"^era5: no Y \(latitude\) axis.*axis='Y'") as err:
        find_axes(ds, ds["2m_temperature"].dims, what="era5")
    assert "\n" not in str(err.value)
    twice = era5().assign_coords(level=("level", [850.0], {"units": "degrees_north"}))
    twice["2m_temperature"] = twice["2m_temperature"].expand_dims("level", axis=1)
    with pytest.raises(DimensionError, match=r"both look like the Y axis; select one value"):
        find_axes(twice, twice["2m_temperature"].dims, what="era5")


def test_bounds_named_in_encoding_and_grid_mappings_are_metadata_not_fields():
    ds = era5().assign(
        time_edges=(("time", "bnds"), np.zeros((2, 2))),
        lat_edges=(("latitude", "bnds"), np.zeros((4, 2))),
        crs=((), np.int32(0), {"grid_mapping_name": "latitude_longitude"}),
    )
    ds["time"].encoding["bounds"] = "time_edges"  # where xarray puts it when decoding times
    ds["latitude"].attrs["bounds"] = "lat_edges"
    assert _metadata_vars(ds) == (["crs"], ["lat_edges", "time_edges"])
    adopted = adopt(ds, grid="coarse", what="era5")
    assert list(adopted.dataset.data_vars) == ["2m_temperature"]
    assert "crs_coarse" in adopted.dataset.coords
