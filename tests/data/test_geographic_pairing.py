"""Pairing by geography, never by array index: archives in cfgrib's layout (bare ``y``/``x``
index dims, 2-D latitude/longitude, the projection only in ``GRIB_*`` attributes), CF grid
mappings, rotated poles and plain latitude/longitude, paired across projections with known
answers: a smooth analytic field sampled on the coarse grid, interpolated to the fine pixels,
compared to the same field evaluated there."""

from __future__ import annotations

import ast

import numpy as np
import pytest
import xarray as xr
from pyproj import CRS, Transformer

from corrdiff_xr.data import CoordinateError, CoverageError, DimensionError
from corrdiff_xr.data.archives import NOTES_ATTR, open_archives

R = 6371229.0  # GRIB's sphere
TIMES = np.array(["2020-01-01T00", "2020-01-01T06", "2020-01-01T12"], dtype="datetime64[ns]")


def truth(lat, lon, hours=0.0):
    """Smooth in position and time (K): large scales and a wave of ~700 km, which a 50 km
    coarse grid resolves to ~0.1 K but which a misplacement by one cell shifts by ~1 K."""
    phi, lam = np.deg2rad(lat), np.deg2rad(lon)
    return (
        260.0 + 30.0 * np.cos(phi) + 6.0 * np.sin(3 * lam + hours / 6) * np.cos(2 * phi)
        + 4.0 * np.sin(5 * phi - hours / 9) + 3.0 * np.sin(60 * phi) * np.cos(50 * lam + hours)
    )  # fmt: skip


# GRIB descriptions (cfgrib's attribute names) and the CF/PROJ definition they stand for
POLAR_SOUTH = (
    {"GRIB_gridType": "polar_stereographic", "GRIB_LaDInDegrees": -60.0,
     "GRIB_LoVInDegrees": 24.0},
    {"grid_mapping_name": "polar_stereographic", "latitude_of_projection_origin": -90.0,
     "standard_parallel": -60.0, "straight_vertical_longitude_from_pole": 24.0,
     "earth_radius": R},
)  # fmt: skip
LAMBERT_SOUTH = (
    {"GRIB_gridType": "lambert", "GRIB_LaDInDegrees": -30.0, "GRIB_LoVInDegrees": 25.0,
     "GRIB_Latin1InDegrees": -25.0, "GRIB_Latin2InDegrees": -35.0},
    {"grid_mapping_name": "lambert_conformal_conic", "standard_parallel": [-25.0, -35.0],
     "longitude_of_central_meridian": 25.0, "latitude_of_projection_origin": -30.0,
     "earth_radius": R},
)  # fmt: skip
ROTATED_SOUTH = (  # GRIB names the southern pole of the rotation
    {"GRIB_gridType": "rotated_ll", "GRIB_latitudeOfSouthernPoleInDegrees": -60.0,
     "GRIB_longitudeOfSouthernPoleInDegrees": 25.0, "GRIB_angleOfRotationInDegrees": 0.0},
    {"grid_mapping_name": "rotated_latitude_longitude", "grid_north_pole_latitude": 60.0,
     "grid_north_pole_longitude": -155.0, "earth_radius": R},
)  # fmt: skip
LAMBERT_NA = (  # HRRR-like, longitudes 0..360 (225..313 over the domain)
    {"GRIB_gridType": "lambert", "GRIB_LaDInDegrees": 38.5, "GRIB_LoVInDegrees": 262.5,
     "GRIB_Latin1InDegrees": 38.5, "GRIB_Latin2InDegrees": 38.5},
    {"grid_mapping_name": "lambert_conformal_conic", "standard_parallel": 38.5,
     "longitude_of_central_meridian": 262.5, "latitude_of_projection_origin": 38.5,
     "earth_radius": R},
)  # fmt: skip


def _latlon(cf: dict, centre: tuple[float, float], shape: tuple[int, int], step: float):
    """2-D lat/lon of a regular ``shape`` grid of ``step`` (m, or degrees if rotated)."""
    crs = CRS.from_cf(cf)
    base = crs.source_crs if crs.is_geographic else crs.geodetic_crs
    to, back = (Transformer.from_crs(a, b, always_xy=True) for a, b in ((base, crs), (crs, base)))
    cx, cy = to.transform(centre[1], centre[0])
    y = cy + (np.arange(shape[0]) - (shape[0] - 1) / 2) * step
    x = cx + (np.arange(shape[1]) - (shape[1] - 1) / 2) * step
    lon, lat = back.transform(*np.meshgrid(x, y))
    return lat, lon, y, x


def cfgrib(grid, centre, shape, step, *, name="t2m", times=TIMES, lon360=True):
    """An archive as cfgrib opens a GRIB file: dims (time, y, x) without coordinate values."""
    grib, cf = grid
    lat, lon, _, _ = _latlon(cf, centre, shape, step)
    hours = (times - times[0]) / np.timedelta64(1, "h")
    values = np.stack([truth(lat, lon, h) for h in hours])
    attrs = {
        "units": "K", "long_name": "2 metre temperature", "GRIB_paramId": 167,
        "GRIB_Nx": shape[1], "GRIB_Ny": shape[0], "GRIB_DxInMetres": step,
        "GRIB_DyInMetres": step, "GRIB_latitudeOfFirstGridPointInDegrees": lat[0, 0],
        "GRIB_longitudeOfFirstGridPointInDegrees": lon[0, 0] % 360, **grib,
    }  # fmt: skip
    geo = {"latitude": "degrees_north", "longitude": "degrees_east"}
    return xr.Dataset(
        {name: (("time", "y", "x"), values, attrs)},
        coords={
            "time": ("time", times, {"standard_name": "forecast_reference_time"}),
            "step": ((), np.timedelta64(0, "ns")),
            "heightAboveGround": ((), 2.0, {"units": "m"}),
            "latitude": (("y", "x"), lat, {"units": geo["latitude"], "standard_name": "latitude"}),
            "longitude": (
                ("y", "x"),
                lon % 360 if lon360 else lon,
                {"units": geo["longitude"], "standard_name": "longitude"},
            ),
            "valid_time": ("time", times),
        },  # fmt: skip
    )


def era5(lat_range, lon_range, step=0.25, *, times=TIMES):
    """ERA5 conventions: latitude descending, longitude 0..360, 1-D axes."""
    lat = np.arange(lat_range[1], lat_range[0] - 1e-9, -step)
    lon = np.arange(lon_range[0], lon_range[1] + 1e-9, step)
    glat, glon = np.meshgrid(lat, lon, indexing="ij")
    hours = (times - times[0]) / np.timedelta64(1, "h")
    return xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"),
                 np.stack([truth(glat, glon, h) for h in hours]), {"units": "K"})},
        coords={"time": times, "latitude": ("latitude", lat, {"units": "degrees_north"}),
                "longitude": ("longitude", lon % 360, {"units": "degrees_east"})},
    )  # fmt: skip


def cf_rotated(grid, centre, shape, step, *, times=TIMES):
    """A CORDEX-like archive: rlat/rlon axes and a CF rotated-pole grid mapping, no lat/lon."""
    _, cf = grid
    lat, lon, rlat, rlon = _latlon(cf, centre, shape, step)
    hours = (times - times[0]) / np.timedelta64(1, "h")
    mapping = {k: v for k, v in cf.items() if k != "earth_radius"}
    return xr.Dataset(
        {"tas": (("time", "rlat", "rlon"), np.stack([truth(lat, lon, h) for h in hours]),
                 {"units": "K", "grid_mapping": "rotated_pole"}),
         "rotated_pole": ((), np.int32(0), mapping)},
        coords={"time": times,
                "rlat": ("rlat", rlat, {"standard_name": "grid_latitude", "units": "degrees"}),
                "rlon": ("rlon", rlon, {"standard_name": "grid_longitude", "units": "degrees"})},
    )  # fmt: skip


def _error(pair, coarse_name="t2m_c"):
    """Max |coarse-on-fine - truth at the fine pixels| over the times (K)."""
    got = pair.inputs_on_fine[coarse_name].values
    lat, lon = pair.dataset["lat"].values, pair.dataset["lon"].values
    hours = (pair.dataset["time"].values - TIMES[0]) / np.timedelta64(1, "h")
    want = np.stack([truth(lat, lon, h) for h in hours])
    return float(np.abs(got - want).max())


SAFRICA = (-34.0, 24.0)

#: coarse archive, fine archive and the bound on the interpolation error (K) for the pair:
#: bilinear interpolation of the ~700 km wave from 50 km (0.5 degree) cells errs by ~0.1 K
#: (h**2/8 times its curvature); a misplacement by one coarse cell would cost ~1.4 K
CASES = {
    "polar-stereographic->lambert": (
        lambda: cfgrib(POLAR_SOUTH, SAFRICA, (40, 44), 50e3),
        lambda: cfgrib(LAMBERT_SOUTH, SAFRICA, (48, 64), 12e3, name="tas"),
        0.25,
    ),
    "lambert->polar-stereographic": (
        lambda: cfgrib(LAMBERT_SOUTH, SAFRICA, (40, 44), 50e3),
        lambda: cfgrib(POLAR_SOUTH, SAFRICA, (48, 64), 12e3, name="tas"),
        0.25,
    ),
    "rotated(grib)->polar-stereographic": (
        lambda: cfgrib(ROTATED_SOUTH, SAFRICA, (40, 44), 0.5),
        lambda: cfgrib(POLAR_SOUTH, SAFRICA, (48, 64), 12e3, name="tas"),
        0.25,
    ),
    "latlon(era5)->lambert": (
        lambda: era5((-50, -15), (0, 50), 0.5),
        lambda: cfgrib(LAMBERT_SOUTH, SAFRICA, (48, 64), 12e3, name="tas"),
        0.25,
    ),
    "lambert->latlon(era5)": (
        lambda: cfgrib(LAMBERT_SOUTH, SAFRICA, (40, 44), 50e3),
        lambda: era5((-37, -31), (20, 28), 0.1).rename(t2m="tas"),
        0.25,
    ),
    "polar-stereographic->rotated(cf)": (
        lambda: cfgrib(POLAR_SOUTH, SAFRICA, (40, 44), 50e3),
        lambda: cf_rotated(ROTATED_SOUTH, SAFRICA, (48, 64), 0.11),
        0.25,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_smooth_field_pairs_across_projections_within_the_interpolation_error(case):
    coarse, fine, bound = (f() if callable(f) else f for f in CASES[case])
    name = next(iter(coarse.data_vars))
    pair = open_archives({"dataset": coarse, "variables": {name: "t2m_c"}}, fine)
    error = _error(pair)
    assert error < bound, error
    assert "placed by" in pair.dataset.attrs[NOTES_ATTR]


def test_cfgrib_axes_are_projection_coordinates_computed_from_the_grib_description():
    fine = cfgrib(POLAR_SOUTH, SAFRICA, (48, 64), 12e3, name="tas")
    pair = open_archives(
        {"dataset": cfgrib(POLAR_SOUTH, SAFRICA, (40, 44), 50e3), "variables": {"t2m": "c"}},
        fine,
    )
    ds = pair.dataset
    # metres on the projection, 12 km apart: GRIB's DxInMetres, recovered from the lat/lon
    np.testing.assert_allclose(np.diff(ds["x"].values), 12e3, rtol=1e-6)
    np.testing.assert_allclose(np.diff(ds["y"].values), 12e3, rtol=1e-6)
    assert ds["x"].attrs["standard_name"] == "projection_x_coordinate"
    # the fine grid carries its CRS as a CF grid mapping, named by its variables
    assert ds["crs"].attrs["grid_mapping_name"] == "polar_stereographic"
    assert ds["tas"].attrs["grid_mapping"] == "crs"
    assert CRS.from_cf(ds["crs"].attrs) == CRS.from_cf(POLAR_SOUTH[1])
    assert CRS.from_cf(ds["crs_coarse"].attrs) == CRS.from_cf(POLAR_SOUTH[1])
    assert "GRIB_gridType='polar_stereographic'" in ds.attrs[NOTES_ATTR]


def test_a_safrica_window_in_cfgrib_layout_gives_a_baseline_close_to_the_truth():
    """The finding: a 32 x 48 window (latitudes -45..-26) was paired with coarse cells 0..33 x
    0..49 by index, a baseline 13x worse than climatology. Placed, it is near the truth."""
    many = np.datetime64("2020-01-01T00", "ns") + np.arange(12) * np.timedelta64(6, "h")
    coarse = cfgrib(POLAR_SOUTH, (-28.0, 24.0), (90, 90), 60e3, times=many)
    fine = cfgrib(POLAR_SOUTH, (-30.0, 25.0), (200, 200), 12e3, name="tas", times=many)
    window = {"y": [40, 72], "x": [60, 108]}
    pair = open_archives({"dataset": coarse, "variables": {"t2m": "t2m_c"}}, fine, window=window)
    ds = pair.dataset
    assert (ds.sizes["y"], ds.sizes["x"]) == (32, 48)
    # the coarse cells kept are those around the window, not the first ones of the archive
    lat_c = ds["lat_coarse"].values
    assert lat_c.min() > ds["lat"].min() - 2 and lat_c.max() < ds["lat"].max() + 2
    base = pair.inputs_on_fine["t2m_c"].values
    truth_fine = ds["tas"].values
    rmse = float(np.sqrt(np.mean((base - truth_fine) ** 2)))
    climatology = float(np.sqrt(np.mean((truth_fine - truth_fine.mean(axis=0)) ** 2)))
    assert rmse < 0.05 * climatology, (rmse, climatology)  # 20x better, not 13x worse


def test_a_curvilinear_coarse_grid_without_a_crs_is_placed_on_the_sphere():
    coarse = cfgrib(LAMBERT_SOUTH, SAFRICA, (40, 44), 50e3)
    for key in [k for k in coarse["t2m"].attrs if k.startswith("GRIB_")]:
        del coarse["t2m"].attrs[key]  # only 2-D latitude/longitude left: curvilinear
    fine = cfgrib(POLAR_SOUTH, SAFRICA, (48, 64), 12e3, name="tas")
    pair = open_archives({"dataset": coarse, "variables": {"t2m": "t2m_c"}}, fine)
    assert pair.regrid_weights.method == "sphere"
    error = _error(pair)  # linear on triangles: as good as bilinear here (~0.16 K)
    assert error < 0.25, error
    assert "curvilinear, placed by its 2-D latitude/longitude" in pair.dataset.attrs[NOTES_ATTR]


def test_bare_index_dims_without_latitude_longitude_are_refused_with_the_fix():
    coarse = cfgrib(POLAR_SOUTH, SAFRICA, (40, 44), 50e3).drop_vars(["latitude", "longitude"])
    fine = cfgrib(LAMBERT_SOUTH, SAFRICA, (48, 64), 12e3, name="tas")
    with pytest.raises(DimensionError, match="bare indices.*latitude/longitude.*never paired by"):
        open_archives({"dataset": coarse, "variables": {"t2m": "c"}}, fine)


def test_a_grib_description_that_does_not_match_the_latitudes_is_refused():
    coarse = cfgrib(POLAR_SOUTH, SAFRICA, (40, 44), 50e3)
    coarse["t2m"].attrs["GRIB_LoVInDegrees"] = 60.0  # the wrong orientation
    fine = cfgrib(LAMBERT_SOUTH, SAFRICA, (48, 64), 12e3, name="tas")
    with pytest.raises(CoordinateError, match="coarse archive: its 2-D latitude/longitude do not"):
        open_archives({"dataset": coarse, "variables": {"t2m": "c"}}, fine)


def test_a_coarse_archive_covering_part_of_the_domain_names_the_window_that_fits():
    coarse = era5((-35, -15), (0, 50), 0.5)  # the fine domain reaches -37.3
    fine = cfgrib(LAMBERT_SOUTH, SAFRICA, (60, 40), 12e3, name="tas")
    with pytest.raises(CoverageError, match=r"south edge.*covers the fine window \{'y'") as err:
        open_archives({"dataset": coarse, "variables": {"t2m": "c"}}, fine)
    window = ast.literal_eval(str(err.value).split("covers the fine window ")[1].split(" (")[0])
    pair = open_archives({"dataset": coarse, "variables": {"t2m": "t2m_c"}}, fine, window=window)
    # pixels within half a coarse cell of its edge take the edge value: a looser bound
    assert _error(pair) < 0.6 and pair.dataset.sizes["y"] >= 30


def test_the_coarse_grid_keeps_the_fine_archives_longitude_convention():
    # a coarse archive in -180..180 beside a fine one in 0..360 over North America
    coarse = era5((15, 60), (-140, -50), 0.5)
    coarse = coarse.assign_coords(longitude=((coarse["longitude"] + 180) % 360) - 180)
    coarse = coarse.sortby("longitude")
    fine = cfgrib(LAMBERT_NA, (38.5, 262.5), (60, 80), 30e3, name="tas")
    pair = open_archives({"dataset": coarse, "variables": {"t2m": "t2m_c"}}, fine)
    ds = pair.dataset
    lon = ds["lon"].values
    assert 180 < lon.min() and lon.max() < 360  # the fine archive's 0..360
    for name in ("x_coarse", "lon_coarse"):
        assert lon.min() - 2 < ds[name].min() and ds[name].max() < lon.max() + 2, name
    assert _error(pair) < 0.25


def test_inspect_reports_an_archives_crs_and_how_its_coordinates_were_obtained(tmp_path, capsys):
    from corrdiff_xr.cli import main

    path = tmp_path / "safrica.zarr"
    cfgrib(POLAR_SOUTH, SAFRICA, (40, 44), 50e3).drop_vars("step").to_zarr(path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "grid (y, x) of 't2m': CRS polar_stereographic (+proj=stere +lat_0=-90" in out
    assert "from GRIB_gridType='polar_stereographic'; axes computed from its 2-D" in out


def test_static_fields_in_cfgrib_layout_are_cut_on_the_same_grid_or_regridded_from_another():
    fine = cfgrib(LAMBERT_SOUTH, SAFRICA, (48, 64), 12e3, name="tas")
    coarse = {"dataset": cfgrib(POLAR_SOUTH, SAFRICA, (40, 44), 50e3), "variables": {"t2m": "c"}}
    # the same Lambert grid, 8 cells wider each side: its own index 0 is not the fine's
    same = cfgrib(LAMBERT_SOUTH, SAFRICA, (64, 80), 12e3, name="orog").isel(time=0, drop=True)
    other = cfgrib(POLAR_SOUTH, SAFRICA, (60, 60), 25e3, name="z").isel(time=0, drop=True)
    pair = open_archives(coarse, fine, [same, other])
    ds = pair.dataset
    np.testing.assert_array_equal(ds["orog"].values, same["orog"].values[8:-8, 8:-8])
    error = np.abs(ds["z"].values - truth(ds["lat"].values, ds["lon"].values)).max()
    assert error < 0.1, error  # 25 km cells: bilinear errs by ~0.03 K
    assert "static archive 1: regridded bilinearly" in ds.attrs[NOTES_ATTR]


def test_a_grid_mapping_that_contradicts_the_latitudes_is_refused():
    from corrdiff_xr.data.sources.native_example import native_archives

    arch = native_archives(nt=3, fine_step_hours=1)
    moved = arch["fine"].assign_coords(lon=arch["fine"]["lon"] + 30.0)  # the pole says 2.5 W
    coarse = {"dataset": arch["coarse"], "variables": {"2m_temperature": "t2m_c"}}
    with pytest.raises(CoordinateError, match=r"fine archive: .*miss its axes by \d+"):
        open_archives(coarse, moved)
