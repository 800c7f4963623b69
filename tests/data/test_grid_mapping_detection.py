"""CF grid-mapping variables are found through cf-xarray, the same way for native archives
(``describe_archive``, ``open_archives``) and canonical stores (``describe``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from corrdiff_xr._cf import grid_mapping_of, grid_mapping_variables, grid_mappings
from corrdiff_xr.data.report import _grid_mapping, describe_archive
from corrdiff_xr.data.sources.native import _metadata_vars, adopt, describe_placement

TIMES = pd.date_range("2001-01-01", periods=2, freq="3h")
ROTATED = {"grid_mapping_name": "rotated_latitude_longitude",
           "grid_north_pole_latitude": 39.25, "grid_north_pole_longitude": -162.0}  # fmt: skip
LAMBERT = {"grid_mapping_name": "lambert_conformal_conic", "standard_parallel": 25.0,
           "longitude_of_central_meridian": 265.0, "latitude_of_projection_origin": 25.0,
           "earth_radius": 6371229.0}  # fmt: skip


def cordex() -> xr.Dataset:
    """A EURO-CORDEX file: ``rotated_pole`` a 0-d char data variable, tas on (rlat, rlon)."""
    rlat, rlon = np.linspace(-2.0, 2.0, 5), np.linspace(-3.0, 3.0, 7)
    tas = np.zeros((len(TIMES), rlat.size, rlon.size), np.float32)
    return xr.Dataset(
        {
            "tas": (("time", "rlat", "rlon"), tas, {"units": "K", "grid_mapping": "rotated_pole"}),
            "rotated_pole": ((), np.bytes_(b""), ROTATED),
        },
        coords={
            "time": TIMES,
            "rlat": ("rlat", rlat, {"standard_name": "grid_latitude", "units": "degrees"}),
            "rlon": ("rlon", rlon, {"standard_name": "grid_longitude", "units": "degrees"}),
        },
    )


def ncep_lambert() -> xr.Dataset:
    """An NCEP grid through THREDDS: an int ``LambertConformal_Projection``, axes in km."""
    y, x = np.arange(4) * 3.0, np.arange(6) * 3.0
    t = np.zeros((len(TIMES), y.size, x.size), np.float32)
    mapping = "LambertConformal_Projection"
    return xr.Dataset(
        {
            "Temperature_surface": (("time", "y", "x"), t, {"units": "K", "grid_mapping": mapping}),
            mapping: ((), np.int32(0), LAMBERT),
        },
        coords={
            "time": TIMES,
            "y": ("y", y, {"standard_name": "projection_y_coordinate", "units": "km"}),
            "x": ("x", x, {"standard_name": "projection_x_coordinate", "units": "km"}),
        },
    )


def era5() -> xr.Dataset:
    """Plain latitude/longitude, no grid-mapping variable at all."""
    lat, lon = np.arange(60.0, 44.0, -4.0), np.arange(0.0, 20.0, 4.0)
    return xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), np.zeros((2, 4, 5)), {"units": "K"})},
        coords={
            "time": TIMES,
            "latitude": ("latitude", lat, {"units": "degrees_north"}),
            "longitude": ("longitude", lon, {"units": "degrees_east"}),
        },
    )


def test_grid_mapping_variables_name_each_mapping_and_its_projection():
    assert grid_mapping_variables(cordex()) == {"rotated_pole": "rotated_latitude_longitude"}
    assert grid_mapping_variables(ncep_lambert()) == {
        "LambertConformal_Projection": "lambert_conformal_conic"
    }
    assert grid_mapping_variables(era5()) == {}


def test_several_mappings_keep_the_archive_order_the_first_is_the_default():
    # not alphabetical: open_archives takes the first as the default mapping
    ds = cordex().assign(crs_wgs84=((), np.int32(0), {"grid_mapping_name": "latitude_longitude"}))
    assert list(grid_mapping_variables(ds)) == ["rotated_pole", "crs_wgs84"]
    assert _metadata_vars(ds)[0] == ["rotated_pole", "crs_wgs84"]


def test_an_archive_report_lists_its_mapping_and_does_not_take_it_for_a_field():
    out = describe_archive(cordex())
    assert "  rotated_pole: grid mapping (rotated_latitude_longitude), kept" in out
    assert "rotated_pole: not gridded" not in out
    out = describe_archive(ncep_lambert())
    assert "  LambertConformal_Projection: grid mapping (lambert_conformal_conic), kept" in out
    assert "Temperature_surface ('time', 'y', 'x') float32: axes T=time, X=x, Y=y" in out
    out = describe_archive(era5().assign(station=(("n",), np.zeros(3))))
    assert "grid mapping" not in out and "  station: not gridded, dims ('n',)" in out


def test_a_store_report_names_the_fine_mapping_never_the_coarse_crs():
    fine = cordex().set_coords("rotated_pole")
    assert _grid_mapping(fine) == "grid mapping 'rotated_pole' (rotated_latitude_longitude)"
    coarse_only = era5().assign_coords(crs_coarse=((), np.int32(0), LAMBERT))
    assert grid_mappings(coarse_only) == {}
    assert _grid_mapping(coarse_only) == "no grid mapping variable"
    assert _grid_mapping(era5()) == "no grid mapping variable"


def test_a_field_naming_its_mapping_in_cf_extended_form_is_placed_by_that_mapping():
    # CF 1.7's "rotated_pole: rlat rlon" names the mapping as "rotated_pole" does; a plain
    # latitude_longitude mapping listed first must not be taken in its place
    ds = cordex().assign(crs=((), np.int32(0), {"grid_mapping_name": "latitude_longitude"}))
    ds = ds[["crs", "rotated_pole", "tas"]]
    ds["tas"].attrs["grid_mapping"] = "rotated_pole: rlat rlon"
    assert grid_mapping_of(ds, "tas") == ["rotated_pole"]
    adopted = adopt(ds, grid="fine", what="cordex")
    assert adopted.grid_mapping == "rotated_pole"
    assert adopted.dataset["tas"].attrs["grid_mapping"] == "rotated_pole"
    # placed by the rotated pole: the grid's centre (0, 0) is not at latitude 0
    assert float(adopted.dataset["lat"].mean()) > 40
    assert "rotated_latitude_longitude" in describe_placement(ds)
