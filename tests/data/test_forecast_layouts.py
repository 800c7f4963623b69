"""Forecasts in cfgrib's layouts adopted on their valid times, the lead kept as ``lead_time``,
and a fine archive's GRIB grid written back to generate's outputs as a CF grid mapping.

cfgrib opens a forecast as ``time`` (standard_name forecast_reference_time) x ``step``
(forecast_period) with a 2-D ``valid_time`` (standard_name time), or, for one reference time,
as ``step`` with a 1-D ``valid_time``; an analysis as ``time`` with ``valid_time`` on it and a
scalar ``step``. The fixtures below are built in that layout; the last test writes a real GRIB
file with ecCodes and checks that cfgrib opens it in the same layout.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr
from pyproj import CRS, Transformer

from corrdiff_xr.data import TimeAxisError
from corrdiff_xr.data.archives import open_archives
from corrdiff_xr.data.sources.native import adopt

R = 6371229.0
LAMBERT = (  # cfgrib reads these keys of a lambert grid by default
    {"GRIB_gridType": "lambert", "GRIB_LaDInDegrees": -30.0, "GRIB_LoVInDegrees": 25.0,
     "GRIB_Latin1InDegrees": -25.0, "GRIB_Latin2InDegrees": -35.0},
    {"grid_mapping_name": "lambert_conformal_conic", "standard_parallel": [-25.0, -35.0],
     "longitude_of_central_meridian": 25.0, "latitude_of_projection_origin": -30.0,
     "earth_radius": R},
)  # fmt: skip
CENTRE = (-29.0, 25.0)
H = np.timedelta64(3600_000_000_000, "ns")
# cfgrib's attributes of its time coordinates
REF = {"long_name": "initial time of forecast", "standard_name": "forecast_reference_time"}
STEP = {"long_name": "time since forecast_reference_time", "standard_name": "forecast_period"}
VALID = {"standard_name": "time", "long_name": "time"}


def _latlon(shape, spacing):
    crs = CRS.from_cf(LAMBERT[1])
    to = Transformer.from_crs(crs.geodetic_crs, crs, always_xy=True)
    cx, cy = to.transform(CENTRE[1], CENTRE[0])
    y = cy + (np.arange(shape[0]) - (shape[0] - 1) / 2) * spacing
    x = cx + (np.arange(shape[1]) - (shape[1] - 1) / 2) * spacing
    lon, lat = Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True).transform(
        *np.meshgrid(x, y)
    )
    return lat, lon


def field(lat, lon, valid):
    """Smooth in position, different at every valid time (K)."""
    hours = ((valid - np.datetime64("2020-01-01", "ns")) / H)[..., None, None]
    return 280.0 + 10 * np.cos(np.deg2rad(lat)) + np.sin(np.deg2rad(4 * lon) + hours / 7)


def grib(shape, spacing, times, steps, *, name="t2m"):
    """A forecast as cfgrib opens it: dims (time, step, y, x), no y/x coordinate values."""
    lat, lon = _latlon(shape, spacing)
    times = np.asarray(times, "datetime64[ns]")
    steps = np.asarray(steps) * H
    valid = times[:, None] + steps[None, :]
    attrs = {
        "units": "K", "long_name": "2 metre temperature", "standard_name": "air_temperature",
        "GRIB_paramId": 167, "GRIB_stepType": "instant", "GRIB_Nx": shape[1],
        "GRIB_Ny": shape[0], "GRIB_DxInMetres": spacing, "GRIB_DyInMetres": spacing,
        "GRIB_latitudeOfFirstGridPointInDegrees": lat[0, 0],
        "GRIB_longitudeOfFirstGridPointInDegrees": lon[0, 0] % 360, **LAMBERT[0],
    }  # fmt: skip
    return xr.Dataset(
        {name: (("time", "step", "y", "x"), field(lat, lon, valid).astype(np.float32), attrs)},
        coords={
            "time": ("time", times, REF),
            "step": ("step", steps, STEP),
            "heightAboveGround": ((), 2.0, {"units": "m", "positive": "up"}),
            "latitude": (("y", "x"), lat, {"units": "degrees_north", "standard_name": "latitude"}),
            "longitude": (
                ("y", "x"),
                lon % 360,
                {"units": "degrees_east", "standard_name": "longitude"},
            ),
            "valid_time": (("time", "step"), valid, VALID),
        },  # fmt: skip
    )


def analysis(shape, spacing, times, *, name="tas"):
    """An analysis as cfgrib opens it: dims (time, y, x), a scalar ``step`` of 0."""
    return grib(shape, spacing, times, [0], name=name).squeeze("step")


COARSE = ((12, 12), 50e3)
FINE = ((16, 16), 12e3)
TIMES = ["2020-01-01T00", "2020-01-01T18"]


def test_a_step_forecast_is_on_its_valid_times():
    one = grib(*COARSE, TIMES[:1], [0, 6, 12]).isel(time=0)  # cfgrib: one reference time
    assert one["t2m"].dims == ("step", "y", "x") and one["valid_time"].dims == ("step",)
    got = adopt(one, grid="coarse", what="coarse").dataset
    np.testing.assert_array_equal(got["time"].values, one["valid_time"].values)
    assert got["lead_time"].values.tolist() == [0, 6, 12]
    np.testing.assert_array_equal(got["t2m"].values, one["t2m"].values)


def test_time_and_step_forecasts_give_valid_times_and_lead_times():
    fc = grib(*COARSE, TIMES, [0, 6, 12])
    got = adopt(fc, grid="coarse", what="coarse").dataset
    hours = [0, 6, 12, 18, 24, 30]
    expected = np.datetime64("2020-01-01T00", "ns") + np.array(hours) * H
    np.testing.assert_array_equal(got["time"].values, expected)
    assert got["lead_time"].values.tolist() == [0, 6, 12] * 2
    assert got["lead_time"].attrs["units"] == "hours"
    for i, (t, s) in enumerate([(t, s) for t in range(2) for s in range(3)]):
        np.testing.assert_array_equal(got["t2m"].values[i], fc["t2m"].values[t, s])


def test_valid_times_given_by_two_forecasts_are_refused_naming_the_select_that_picks_one():
    fc = grib(*COARSE, ["2020-01-01T00", "2020-01-01T06"], [0, 6, 12])
    with pytest.raises(
        TimeAxisError, match=r"leads 0 h, 6 h, 12 h.*2020-01-01T06.*select=\{'step': '12h'\}"
    ):
        adopt(fc, grid="coarse", what="coarse archive")
    got = adopt(fc, grid="coarse", select={"step": "6h"}, what="coarse").dataset
    assert got["lead_time"].values.tolist() == [6, 6]
    np.testing.assert_array_equal(got["time"].values, fc["valid_time"].values[:, 1])


def test_an_unsorted_flattening_is_sorted_by_valid_time():
    fc = grib(*COARSE, ["2020-01-01T00", "2020-01-01T03"], [0, 6])  # 00, 06, 03, 09
    got = adopt(fc, grid="coarse", what="coarse").dataset
    assert (np.diff(got["time"].values) > np.timedelta64(0)).all()
    assert got["lead_time"].values.tolist() == [0, 0, 6, 6]


def test_a_coarse_and_a_fine_forecast_with_different_leads_are_refused():
    coarse = grib(*COARSE, ["2020-01-01T00"], [6, 12])
    fine = grib(*FINE, ["2020-01-01T06"], [0, 6], name="tas")  # same valid times, leads 0, 6
    with pytest.raises(TimeAxisError, match=r"different leads.*6 vs 0 hours.*select=\{'step'"):
        open_archives({"dataset": coarse, "variables": {"t2m": "t2m_c"}}, fine)
    same = grib(*FINE, ["2020-01-01T00"], [6, 12], name="tas")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pair = open_archives({"dataset": coarse, "variables": {"t2m": "t2m_c"}}, same)
    assert pair.dataset["lead_time"].values.tolist() == [6, 12]


@pytest.fixture(scope="module")
def forecast_pair(tmp_path_factory):
    """GEFS-like forecasts paired with an HRRR-like analysis at their valid times, as Zarr."""
    coarse = grib(*COARSE, ["2020-01-01T00", "2020-01-01T12"], [0, 3, 6, 9])
    valid = np.sort(coarse["valid_time"].values.ravel())
    fine = analysis(*FINE, valid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pair = open_archives({"dataset": coarse, "variables": {"t2m": "t2m_c"}}, fine)
    path = tmp_path_factory.mktemp("forecast") / "pair.zarr"
    pair.dataset.to_zarr(path, consolidated=False)
    return path, pair


def test_the_paired_forecast_keeps_its_lead_time_and_the_grib_grid_mapping(forecast_pair):
    _, pair = forecast_pair
    ds = pair.dataset
    assert ds["lead_time"].dims == ("time",)
    assert ds["lead_time"].values.tolist() == [0, 3, 6, 9] * 2
    assert ds["crs"].attrs["grid_mapping_name"] == "lambert_conformal_conic"
    assert ds["tas"].attrs["grid_mapping"] == "crs"


def test_a_lead_time_aware_config_trains_on_a_grib_forecast(forecast_pair, tmp_path):
    from _train_helpers import tiny_config

    from corrdiff_xr.config import TrainRunConfig, from_dict
    from corrdiff_xr.training import train

    path, _ = forecast_pair
    cfg = tiny_config(path, tmp_path / "lt", duration=4, validate_every=4)
    cfg["data"]["lead_time"] = "lead_time"
    cfg["network"].update(lead_time_channels=4, lead_time_steps=10)  # labels 0..9 hours
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = train(from_dict(TrainRunConfig, cfg))
    assert result.completed and np.isfinite(result.loss)


def test_generate_writes_the_grib_grid_mapping_into_zarr_and_netcdf(forecast_pair, tmp_path):
    import cf_xarray  # noqa: F401

    from corrdiff_xr.cli import main
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.data import open_pair
    from corrdiff_xr.testing import tiny_corrdiff

    path, _ = forecast_pair
    pair = open_pair(str(path))
    tiny_corrdiff(Codec.from_pair(pair), FINE[0]).save(tmp_path / "m.safetensors")
    out, nc = tmp_path / "out.zarr", tmp_path / "out.nc"
    argv = ["generate", "--data", str(path), "--checkpoint", str(tmp_path / "m.safetensors"),
            "--steps", "2", "--members", "1", "--times", "2020-01-01T03", "--torch-threads",
            "1", "--zarr", str(out), "--netcdf", str(nc)]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert main(argv) == 0
    crs = CRS.from_cf(pair.dataset["crs"].attrs)
    groups = [xr.open_zarr(out)] + [xr.open_dataset(nc, group=g) for g in ("truth", "prediction")]
    for ds in groups:
        assert ds.cf.grid_mapping_names == {"lambert_conformal_conic": ["crs"]}
        assert ds["tas"].attrs["grid_mapping"] == "crs"
        assert CRS.from_cf(ds["crs"].attrs) == crs
        np.testing.assert_allclose(ds["y"].values, pair.dataset["y"].values)


def test_cfgrib_opens_a_real_grib_forecast_in_the_fixtures_layout(tmp_path):
    eccodes = pytest.importorskip("eccodes")
    pytest.importorskip("cfgrib")
    path = tmp_path / "fc.grib2"
    keys = {"Nx": 12, "Ny": 10, "DxInMetres": 12000, "DyInMetres": 12000, "LaDInDegrees": 60,
            "orientationOfTheGridInDegrees": 10, "latitudeOfFirstGridPointInDegrees": 55,
            "longitudeOfFirstGridPointInDegrees": 5, "dataTime": 0, "stepUnits": 1}  # fmt: skip
    with open(path, "wb") as f:
        for date in (20200101, 20200102):
            for step in (0, 6, 12):
                h = eccodes.codes_grib_new_from_samples("polar_stereographic_sfc_grib2")
                for k, v in {**keys, "dataDate": date, "forecastTime": step}.items():
                    eccodes.codes_set(h, k, v)
                eccodes.codes_set_values(h, np.full(120, 280.0 + step))
                eccodes.codes_write(h, f)
                eccodes.codes_release(h)
    read = ["LaDInDegrees", "orientationOfTheGridInDegrees", "projectionCentreFlag"]
    real = xr.open_dataset(path, engine="cfgrib", indexpath="", backend_kwargs={"read_keys": read})
    fixture = grib(*COARSE, TIMES, [0, 6, 12])
    for name in ("time", "step", "valid_time", "latitude", "longitude"):
        assert real[name].dims == fixture[name].dims, name
        assert real[name].dtype == fixture[name].dtype, name
        std = real[name].attrs["standard_name"]
        assert std == fixture[name].attrs["standard_name"], name
        if name in ("time", "step", "valid_time"):  # found by these standard names
            assert real[name].attrs == fixture[name].attrs, name
    assert real["t"].dims == fixture["t2m"].dims
    got = adopt(real, grid="fine", what="fine").dataset
    np.testing.assert_array_equal(got["time"].values, real["valid_time"].values.ravel())
    assert got["lead_time"].values.tolist() == [0, 6, 12] * 2
    assert got["crs"].attrs["grid_mapping_name"] == "polar_stereographic"
    np.testing.assert_allclose(np.diff(got["x"].values), 12000.0, rtol=1e-9)
