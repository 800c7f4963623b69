"""Lazy bilinear regridding against scipy, exactness on linear fields, coverage errors."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from scipy.interpolate import RegularGridInterpolator

from corrdiff_xr.data import (
    CoordinateError,
    CoverageError,
    bilinear_weights,
    regrid,
    synthetic_dataset,
)
from corrdiff_xr.data.regrid import grid_method
from corrdiff_xr.testing import raise_if_dask_computes

LAT = {"standard_name": "latitude", "units": "degrees_north"}
LON = {"standard_name": "longitude", "units": "degrees_east"}
PY = {"standard_name": "projection_y_coordinate", "units": "m"}
PX = {"standard_name": "projection_x_coordinate", "units": "m"}


def _dataset(
    yc,
    xc,
    y,
    x,
    field,
    *,
    lat2=None,
    lon2=None,
    coarse_attrs=(LAT, LON),
    fine_attrs=(LAT, LON),
):
    """A canonical Dataset holding one coarse input ``f`` = field(yc, xc) over 2 times."""
    if lat2 is None:
        lat2, lon2 = np.meshgrid(y, x, indexing="ij")
    values = np.stack([field(*np.meshgrid(yc, xc, indexing="ij")) * s for s in (1.0, 2.0)])
    return xr.Dataset(
        {
            "f": (
                ("time", "y_coarse", "x_coarse"),
                values,
                {"units": "1", "long_name": "f"},
            )
        },
        coords={
            "time": np.array(["2020-01-01T00", "2020-01-01T01"], dtype="datetime64[ns]"),
            "y_coarse": ("y_coarse", yc, coarse_attrs[0]),
            "x_coarse": ("x_coarse", xc, coarse_attrs[1]),
            "y": ("y", y, fine_attrs[0]),
            "x": ("x", x, fine_attrs[1]),
            "lat": (("y", "x"), lat2),
            "lon": (("y", "x"), lon2),
        },
    )


def _smooth(a, b):
    return np.sin(a / 3.0) * np.cos(b / 5.0) + 0.01 * a * b


def test_latlon_regridding_matches_scipy_at_the_fine_lat_lon():
    yc, xc = np.linspace(40, 60, 11), np.linspace(-10, 10, 21)
    y, x = np.linspace(42.3, 57.9, 37), np.linspace(-8.1, 9.7, 29)
    # a rotated fine grid: its lat/lon are 2-D and not aligned with y/x
    yy, xx = np.meshgrid(y, x, indexing="ij")
    lat2, lon2 = 50 + 0.8 * (yy - 50) + 0.1 * xx, 0.8 * xx - 0.1 * (yy - 50)
    ds = _dataset(yc, xc, y, x, _smooth, lat2=lat2, lon2=lon2)
    out = regrid(ds).f.values
    ref = RegularGridInterpolator((yc, xc), ds.f.values[1])(np.stack([lat2, lon2], axis=-1))
    np.testing.assert_allclose(out[1], ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out[0], ref / 2, rtol=1e-12, atol=1e-12)


def test_descending_latitudes_like_era5_give_the_same_answer():
    yc, xc = np.linspace(60, 40, 11), np.linspace(-10, 10, 21)
    y, x = np.linspace(41, 59, 13), np.linspace(-9, 9, 17)
    ds = _dataset(yc, xc, y, x, _smooth)
    out = regrid(ds).f.values[0]
    ref = RegularGridInterpolator((yc[::-1], xc), ds.f.values[0][::-1])(
        np.stack(np.meshgrid(y, x, indexing="ij"), axis=-1)
    )
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["latlon", "projected"])
def test_a_linear_field_is_reproduced_exactly(method):
    attrs = (LAT, LON) if method == "latlon" else (PY, PX)
    yc, xc = np.linspace(0, 100, 6), np.linspace(-50, 50, 9)
    y, x = np.linspace(3, 97, 23), np.linspace(-45, 48, 31)
    ds = _dataset(
        yc,
        xc,
        y,
        x,
        lambda a, b: 3.0 * a - 2.0 * b + 7.0,
        coarse_attrs=attrs,
        fine_attrs=attrs,
    )
    if method == "projected":  # geographic coords unrelated to y/x: must not be used
        ds = ds.assign_coords(lat=ds.lat * 0 + 10.0, lon=ds.lon * 0 - 3.0)
    assert grid_method(ds) == method
    yy, xx = np.meshgrid(y, x, indexing="ij")
    np.testing.assert_allclose(
        regrid(ds).f.values[0], 3.0 * yy - 2.0 * xx + 7.0, rtol=1e-12, atol=1e-10
    )


def test_projected_synthetic_grid_regrids_by_y_x_like_scipy():
    ds = synthetic_dataset(ny=32, nx=24, nt=1, grid="projected", factor=4)
    assert grid_method(ds) == "projected"
    coarse = ds.msl.values[0].astype(np.float64)
    out = regrid(ds, ["msl"]).msl.values[0]
    yy, xx = np.meshgrid(ds.y.values, ds.x.values, indexing="ij")
    inside = (yy >= ds.y_coarse.values[0]) & (yy <= ds.y_coarse.values[-1])
    inside &= (xx >= ds.x_coarse.values[0]) & (xx <= ds.x_coarse.values[-1])
    ref = RegularGridInterpolator((ds.y_coarse.values, ds.x_coarse.values), coarse)(
        np.stack([yy[inside], xx[inside]], axis=-1)
    )
    np.testing.assert_allclose(out[inside], ref, rtol=1e-6)


def test_fine_pixels_within_half_a_coarse_cell_of_the_edge_take_the_edge_value():
    ds = synthetic_dataset(ny=16, nx=16, nt=1, factor=4)
    out = regrid(ds, ["t2m_coarse"]).t2m_coarse.values[0]
    coarse = ds.t2m_coarse.values[0]
    np.testing.assert_allclose(out[0, 0], coarse[0, 0], rtol=1e-6)
    np.testing.assert_allclose(out[-1, -1], coarse[-1, -1], rtol=1e-6)


def test_a_global_coarse_grid_wraps_around_the_dateline_and_greenwich():
    yc, xc = np.linspace(-90, 90, 19), np.arange(0, 360, 10.0)
    y, x = np.linspace(40, 60, 5), np.linspace(-7, 7, 15)  # straddles 0 degrees east
    ds = _dataset(yc, xc, y, x, lambda a, b: np.cos(np.deg2rad(b)) + a / 90)
    out = regrid(ds).f.values[0]
    ext_x = np.append(xc - 360, xc)
    ext = np.concatenate([ds.f.values[0], ds.f.values[0]], axis=1)
    ref = RegularGridInterpolator((yc, ext_x), ext)(
        np.stack(np.meshgrid(y, x, indexing="ij"), axis=-1)
    )
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


def test_a_coarse_grid_that_misses_the_north_edge_is_an_error_naming_it():
    yc, xc = np.linspace(40, 50, 6), np.linspace(-10, 10, 11)
    y, x = np.linspace(45, 53.5, 5), np.linspace(-5, 5, 5)
    ds = _dataset(yc, xc, y, x, _smooth)
    with pytest.raises(
        CoverageError, match=r"north edge.*'lat' reaches 53\.5.*'y_coarse' ends at 50"
    ):
        bilinear_weights(ds)


def test_a_coarse_grid_that_misses_the_west_edge_is_an_error_naming_it():
    yc, xc = np.linspace(40, 50, 6), np.linspace(-10, 10, 11)
    y, x = np.linspace(42, 48, 5), np.linspace(-14, 5, 5)
    ds = _dataset(yc, xc, y, x, _smooth)
    with pytest.raises(
        CoverageError, match=r"west edge.*'lon' reaches -14.*'x_coarse' starts at -10"
    ):
        bilinear_weights(ds)


def test_fine_and_coarse_grids_in_different_coordinate_systems_are_an_error():
    yc, xc = np.linspace(0, 10, 6), np.linspace(0, 10, 6)
    ds = _dataset(yc, xc, yc, xc, _smooth, coarse_attrs=(PY, PX), fine_attrs=(LAT, LON))
    with pytest.raises(CoordinateError, match=r"'y_coarse'.*'y'.*same coordinate system"):
        bilinear_weights(ds)


def test_weights_are_convex_combinations_of_four_coarse_points(tiny_synthetic):
    w = bilinear_weights(tiny_synthetic)
    assert w.index.shape == (32, 32, 4) and w.weight.shape == (32, 32, 4)
    np.testing.assert_allclose(w.weight.sum(-1), 1.0)
    assert (w.weight >= 0).all() and w.index.max() < 8 * 8


def test_regridding_is_lazy_keeps_float32_and_follows_the_input_and_target_chunks():
    ds = synthetic_dataset(ny=32, nx=32, nt=6, chunks={"time": 2, "y": 16, "x": 32})
    weights = bilinear_weights(ds)
    with raise_if_dask_computes():
        out = regrid(ds, weights=weights)
    var = out["t2m_coarse"]
    assert isinstance(var.data, da.Array) and var.dtype == np.float32
    assert var.chunks == ((2, 2, 2), (16, 16), (32,))
    eager = weights.apply(ds["t2m_coarse"].values)
    np.testing.assert_allclose(var.values, eager, rtol=1e-6)


def test_projected_grids_in_different_units_are_an_error_naming_both():
    yc, xc = np.linspace(0, 10, 6), np.linspace(0, 10, 6)
    km = ({**PY, "units": "km"}, {**PX, "units": "km"})
    ds = _dataset(yc, xc, yc * 1000, xc * 1000, _smooth, coarse_attrs=km, fine_attrs=(PY, PX))
    with pytest.raises(CoordinateError, match=r"'y_coarse' is in 'km' but fine 'y' is in 'm'"):
        bilinear_weights(ds)


@pytest.mark.parametrize("rotated", [False, True])
def test_eager_apply_matches_scipy_in_float64_and_float32_into_a_batch_channel(rotated):
    # a rectilinear grid takes the separable matrix-product path, a rotated one the gather
    yc, xc = np.linspace(40, 60, 11), np.linspace(-10, 10, 21)
    y, x = np.linspace(42.3, 57.9, 37), np.linspace(-8.1, 9.7, 29)
    yy, xx = np.meshgrid(y, x, indexing="ij")
    lat2, lon2 = (
        (50 + 0.8 * (yy - 50) + 0.1 * xx, 0.8 * xx - 0.1 * (yy - 50)) if rotated else (yy, xx)
    )
    ds = _dataset(yc, xc, y, x, _smooth, lat2=lat2, lon2=lon2)
    w = bilinear_weights(ds)
    assert (w._separable is None) == rotated
    ref = np.stack(
        [RegularGridInterpolator((yc, xc), f)(np.stack([lat2, lon2], axis=-1)) for f in ds.f.values]
    )
    np.testing.assert_allclose(w.apply(ds.f.values), ref, rtol=1e-12, atol=1e-12)
    batch = np.full((2, 3, 37, 29), np.nan, dtype=np.float32)
    out = w.apply(ds.f.values.astype(np.float32), out=batch[:, 1])
    assert out.base is batch or np.shares_memory(out, batch)
    np.testing.assert_allclose(batch[:, 1], ref, rtol=1e-5, atol=1e-5)
    assert np.isnan(batch[:, [0, 2]]).all()  # neighbouring channels untouched


POLAR = {
    "grid_mapping_name": "polar_stereographic", "latitude_of_projection_origin": -90.0,
    "standard_parallel": -60.0, "straight_vertical_longitude_from_pole": 24.0,
    "earth_radius": 6371229.0,
}  # fmt: skip


def _polar_coarse_dataset(field):
    """Coarse cells on a south polar stereographic grid (its CRS as ``crs_coarse``), a fine
    lat/lon grid over them, latitude descending."""
    from pyproj import CRS, Transformer

    crs = CRS.from_cf(POLAR)
    to = Transformer.from_crs(crs.geodetic_crs, crs, always_xy=True)
    x0, y0 = to.transform(24.0, -34.0)
    yc = y0 + np.arange(-10, 11) * 50e3
    xc = x0 + np.arange(-12, 13) * 50e3
    lat, lon = np.arange(-31.0, -37.01, -0.25), np.arange(21.0, 27.01, 0.25)
    ds = _dataset(yc, xc, lat, lon, field, coarse_attrs=(PY, PX))
    return ds.assign_coords(crs_coarse=((), 0, POLAR)), to


def test_a_coarse_grid_with_its_own_crs_is_sampled_where_the_fine_pixels_are():
    # a field linear in the coarse projection is reproduced exactly at the projected pixels
    ds, to = _polar_coarse_dataset(lambda a, b: 2e-5 * a - 3e-5 * b + 7.0)
    assert grid_method(ds) == "crs"
    out = regrid(ds).f.values[0]
    px, py = to.transform(ds["lon"].values, ds["lat"].values)
    np.testing.assert_allclose(out, 2e-5 * py - 3e-5 * px + 7.0, rtol=0, atol=1e-9)


def test_a_coarse_crs_without_its_grid_mapping_attributes_is_one_clear_line():
    ds, _ = _polar_coarse_dataset(_smooth)
    ds["crs_coarse"].attrs = {}  # e.g. attributes lost in a copy
    with pytest.raises(CoordinateError, match=r"^coordinate 'crs_coarse' has no attributes; "):
        bilinear_weights(ds)


def test_bare_index_axes_without_latitude_longitude_are_refused():
    yc, xc = np.arange(6.0), np.arange(6.0)
    ds = _dataset(yc, xc, yc, xc, _smooth, coarse_attrs=({}, {}), fine_attrs=({}, {}))
    with pytest.raises(CoordinateError, match="bare indices.*never paired by index"):
        bilinear_weights(ds)


def test_grids_claiming_one_system_whose_latitudes_disagree_are_refused():
    # index axes on both sides (a parent grid's indices) but the coarse cells lie elsewhere:
    # the shape of the cfgrib finding, caught by geography
    index = ({"units": "1", "axis": "Y"}, {"units": "1", "axis": "X"})
    yc, xc = np.arange(0.0, 40.0, 4.0), np.arange(0.0, 40.0, 4.0)
    y, x = np.arange(0.0, 36.0), np.arange(0.0, 36.0)
    ds = _dataset(yc, xc, y, x, _smooth, coarse_attrs=index, fine_attrs=index,
                  lat2=np.meshgrid(-45 + 0.5 * y, x, indexing="ij")[0],
                  lon2=np.meshgrid(y, 10 + 0.5 * x, indexing="ij")[1])  # fmt: skip
    glat, glon = np.meshgrid(-52 + 1.5 * yc, 8 + 1.5 * xc, indexing="ij")
    shifted = ds.assign_coords(lat_coarse=(("y_coarse", "x_coarse"), glat),
                               lon_coarse=(("y_coarse", "x_coarse"), glon))  # fmt: skip
    with pytest.raises(CoordinateError, match="claim one coordinate system.*differ by up to"):
        bilinear_weights(shifted)
    agree = ds.assign_coords(
        lat_coarse=(("y_coarse", "x_coarse"), np.meshgrid(-45 + 0.5 * yc, xc, indexing="ij")[0]),
        lon_coarse=(("y_coarse", "x_coarse"), np.meshgrid(yc, 10 + 0.5 * xc, indexing="ij")[1]),
    )
    assert bilinear_weights(agree).method == "projected"
