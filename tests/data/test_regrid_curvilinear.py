"""Conservative regridding where a grid is curvilinear (polygon overlaps in an equal-area plane)
against known answers: constants exact, the area integral over the fine domain kept, the
coarse cell holding each fine pixel found by the rotated pole's own axes, the axis-by-axis
weights where the grids are rectilinear, and refusals naming the fix."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import xarray as xr
from test_geographic_pairing import R, cf_rotated, cfgrib, era5
from test_regrid_methods import grid

from corrdiff_xr.data import CoordinateError, CoverageError
from corrdiff_xr.data.archives import open_archives
from corrdiff_xr.data.grids import crs_from_cf, from_geographic
from corrdiff_xr.data.regrid import bilinear_weights, regrid
from corrdiff_xr.data.regrid_curvilinear import cell_polygons, conservative_weights

shapely = pytest.importorskip("shapely")

# EURO-CORDEX's rotated pole (0.44 degree cells) and a Lambert grid of 12 km over Germany
EURO_CORDEX = (
    None,
    {"grid_mapping_name": "rotated_latitude_longitude", "grid_north_pole_latitude": 39.25,
     "grid_north_pole_longitude": -162.0, "earth_radius": R},
)  # fmt: skip
LAMBERT_EU = (
    {"GRIB_gridType": "lambert", "GRIB_LaDInDegrees": 49.5, "GRIB_LoVInDegrees": 10.0,
     "GRIB_Latin1InDegrees": 49.5, "GRIB_Latin2InDegrees": 49.5},
    {"grid_mapping_name": "lambert_conformal_conic", "standard_parallel": 49.5,
     "longitude_of_central_meridian": 10.0, "latitude_of_projection_origin": 49.5,
     "earth_radius": R},
)  # fmt: skip
GERMANY = (50.0, 10.0)


#: EURO-CORDEX-like coarse ``(12, 14)`` and ERA5 (latitude descending, 0..360) over Germany
COARSE = {
    "crs": lambda: cf_rotated(EURO_CORDEX, GERMANY, (12, 14), 0.44),
    "latlon": lambda: era5((45.0, 55.0), (2.0, 18.0), 0.5).rename(t2m="tas"),
}


@pytest.fixture(scope="module")
def pairs() -> dict:
    """Pairs over a Lambert fine grid ``(40, 44)`` of 12 km, conservative; coarse noise."""
    fine = cfgrib(LAMBERT_EU, GERMANY, (40, 44), 12e3, name="tas")
    out = {}
    for kind, make in COARSE.items():
        coarse = make()
        coarse["tas"].values[:] = np.random.default_rng(0).normal(280.0, 10.0, coarse["tas"].shape)
        out[kind] = open_archives(
            {"dataset": coarse, "variables": {"tas": "t_c"}}, fine, regrid="conservative"
        )
    return out


def dataset(pairs: dict, placed: str) -> xr.Dataset:
    """A pair's dataset; ``"sphere"``: the rotated-pole one known by 2-D lat/lon alone."""
    return curvilinear_only(pairs["crs"].dataset) if placed == "sphere" else pairs[placed].dataset


@pytest.mark.parametrize("kind", ["crs", "latlon"])
def test_open_archives_regrids_to_a_lambert_grid_conservatively(pairs, kind):
    pair = pairs[kind]
    weights = pair.regrid_weights
    assert (weights.scheme, weights.method) == ("conservative", kind)
    on_fine = pair.inputs_on_fine["t_c"]
    assert on_fine.attrs["regridding"].startswith("conservative")
    coarse = pair.coarse["t_c"].values.reshape(3, -1)
    want = (coarse[:, weights.index] * weights.weight).sum(-1)
    np.testing.assert_allclose(on_fine.values, want, rtol=1e-12)


def curvilinear_only(ds: xr.Dataset) -> xr.Dataset:
    """The same grids with the coarse one known by its 2-D latitude/longitude alone."""
    ds = ds.drop_vars("crs_coarse")
    for name in ("y_coarse", "x_coarse"):
        ds[name].attrs = {}
    return ds


def on_fine(ds: xr.Dataset, name: str = "t_c") -> np.ndarray:
    weights = bilinear_weights(ds, scheme="conservative")
    return regrid(ds, [name], weights=weights)[name].values


def dense(index: np.ndarray, weight: np.ndarray, n: int) -> np.ndarray:
    """``(y, x, n)`` weights of every coarse cell, from four-corner tables."""
    out = np.zeros(index.shape[:2] + (n,))
    iy, ix = np.indices(index.shape[:2])
    for k in range(4):
        np.add.at(out, (iy, ix, index[..., k]), weight[..., k])
    return out


@pytest.mark.parametrize("placed", ["crs", "sphere", "latlon"])
def test_a_constant_stays_exact_on_the_lambert_grid(pairs, placed):
    ds = dataset(pairs, placed)
    ds = ds.assign(t_c=xr.full_like(ds["t_c"], 273.15))
    assert bilinear_weights(ds).method == placed
    np.testing.assert_allclose(on_fine(ds), 273.15, rtol=1e-14, atol=0)


@pytest.mark.parametrize("placed", ["crs", "sphere", "latlon"])
def test_the_area_integral_over_the_fine_domain_is_kept(pairs, placed):
    ds = dataset(pairs, placed)
    fine_cells, coarse_cells, flat, _ = cell_polygons(ds)
    # each coarse cell's part inside the fine domain, from the union of the fine cells
    inside = shapely.area(shapely.intersection(coarse_cells, shapely.union_all(fine_cells)))
    fine_area = shapely.area(fine_cells)
    assert abs(inside.sum() / fine_area.sum() - 1) < 1e-9  # the domain is covered
    coarse = ds["t_c"].values.reshape(3, -1)[:, flat]
    want = (coarse * inside).sum(axis=1) / inside.sum()
    schemes = (("conservative", 1e-12),) + ((("bilinear", None),) if placed != "sphere" else ())
    for scheme, bound in schemes:
        weights = bilinear_weights(ds, scheme=scheme)
        fine = regrid(ds, ["t_c"], weights=weights)["t_c"].values.reshape(3, -1)
        got = (fine * fine_area).sum(axis=1) / fine_area.sum()
        if bound is not None:  # measured 1e-13 K on 280 K, 4e-16 relative
            assert np.abs(got - want).max() < bound * 280.0, np.abs(got - want).max()
        else:  # interpolation does not keep it (measured 0.05 K)
            assert np.abs(got - want).max() > 1e-3


def test_a_fine_pixel_inside_one_coarse_cell_takes_the_cell_of_the_rotated_axes_holding_it(pairs):
    ds = pairs["crs"].dataset
    weights = bilinear_weights(ds)
    crs = crs_from_cf(ds["crs_coarse"].attrs)
    ry, rx = from_geographic(crs, ds["lat"].values, ds["lon"].values)  # rotated lat/lon
    row = np.abs(ry[..., None] - ds["y_coarse"].values).argmin(-1)
    col = np.abs(rx[..., None] - ds["x_coarse"].values).argmin(-1)
    ncx = ds.sizes["x_coarse"]
    whole = weights.weight[..., 0] > 1 - 1e-12
    assert whole.sum() > 300  # 12 km cells in 49 km ones: most lie inside one
    np.testing.assert_array_equal(weights.index[..., 0][whole], (row * ncx + col)[whole])
    # and the others share their cell among the coarse cells next to that one
    used = weights.weight > 0
    assert (np.abs(weights.index // ncx - row[..., None]) <= 1)[used].all()
    assert (np.abs(weights.index % ncx - col[..., None]) <= 1)[used].all()


@pytest.mark.parametrize("scale, bound", [(1.0, 2e-2), (0.01, 2e-4)])
def test_rectilinear_grids_given_as_curvilinear_match_the_axis_weights(scale, bound):
    # 1 degree (or 0.01) coarse cells, fine ones 0.13 x 0.17 of that, not aligned
    clat, clon = 45.0 + scale * np.arange(-5.0, 6.0), 5.0 + scale * np.arange(-5.0, 6.0)
    flat = 45.0 + scale * (np.arange(41.03, 48.9, 0.13) - 45.0)
    flon = 5.0 + scale * (np.arange(1.21, 9.0, 0.17) - 5.0)
    axes = bilinear_weights(grid(clat, clon, flat, flon), scheme="conservative")
    curvilinear = bilinear_weights(
        grid(clat, clon, flat, flon, placed=False), scheme="conservative"
    )
    assert (axes.method, curvilinear.method) == ("latlon", "sphere")
    n = clat.size * clon.size
    diff = np.abs(
        dense(axes.index, axes.weight, n) - dense(curvilinear.index, curvilinear.weight, n)
    )
    # cells known by their centres have straight edges in the plane, not parallels: the
    # weights differ by the parallels' bulge over a fine cell, proportional to the cell size
    # (measured 1.7e-2 at 1 degree, 1.6e-4 at 0.01); a misplaced cell would differ by ~1
    assert diff.max() < bound, diff.max()


def test_a_latlon_coarse_grid_follows_its_parallels_and_matches_the_axis_weights():
    # ERA5's order (latitude descending); the polygon path forced on a rectilinear pair
    clat, clon = np.arange(50.0, 39.0, -1.0), np.arange(0.0, 11.0)
    ds = grid(clat, clon, np.arange(41.03, 48.9, 0.13), np.arange(1.21, 9.0, 0.17))
    axes = bilinear_weights(ds, scheme="conservative")
    index, weight = conservative_weights(ds)
    n = clat.size * clon.size
    diff = np.abs(dense(axes.index, axes.weight, n) - dense(index, weight, n))
    # coarse edges follow the parallels (4 points each); the fine cells' straight edges
    # remain (measured 5.4e-4, against 8e-3 with straight coarse edges)
    assert diff.max() < 1e-3, diff.max()


@pytest.mark.parametrize("fine", ["rectilinear", "rotated"])
def test_a_global_era5_grid_regrids_a_domain_across_greenwich_as_its_regional_crop(fine):
    clat, clon = np.arange(60.0, 39.0, -1.0), np.arange(0.0, 360.0, 1.0)  # ERA5's order
    yy, xx = np.meshgrid(np.arange(40.0), np.arange(44.0), indexing="ij")
    flat, flon = 45.03 + 0.13 * yy, -3.7 + 0.17 * xx  # -3.7 .. 3.6: across the seam
    if fine == "rotated":  # curvilinear in lat/lon: the polygon path
        flat, flon = flat + 0.05 * xx, flon - 0.05 * yy
    field = np.random.default_rng(2).normal(size=(clat.size, clon.size))
    signed = np.where(clon < 180.0, clon, clon - 360.0)
    crop = np.argsort(signed)[np.abs(np.sort(signed)) <= 12.0]  # -12 .. 12, ascending
    whole = grid(clat, clon, flat, flon, field=field)
    regional = grid(clat, signed[crop], flat, flon, field=field[:, crop])
    np.testing.assert_allclose(on_fine(whole, "u"), on_fine(regional, "u"), rtol=0, atol=1e-12)


def with_bounds(ds: xr.Dataset, lat: str, lon: str, lat1: np.ndarray, lon1: np.ndarray):
    """``ds`` with CF bounds ``(..., 4)`` of the cells of 1-D ``lat1 x lon1`` (uniform steps)
    as coordinates ``{lat}_bnds``/``{lon}_bnds``, and the centres moved a quarter cell off."""
    dy, dx = lat1[1] - lat1[0], lon1[1] - lon1[0]
    ey, ex = np.meshgrid(
        np.append(lat1 - dy / 2, lat1[-1] + dy / 2),
        np.append(lon1 - dx / 2, lon1[-1] + dx / 2),
        indexing="ij",
    )
    dims = ds[lat].dims + ("nv",)
    corners = [np.stack([g[:-1, :-1], g[:-1, 1:], g[1:, 1:], g[1:, :-1]], -1) for g in (ey, ex)]
    ds = ds.assign_coords({f"{lat}_bnds": (dims, corners[0]), f"{lon}_bnds": (dims, corners[1])})
    ds[lat] = ds[lat] + dy / 4
    ds[lon] = ds[lon] - dx / 4
    return ds


@pytest.mark.parametrize("which", ["coarse", "fine"])
def test_cf_bounds_outline_the_cells_whatever_the_centres(which):
    clat, clon = 45.0 + 0.1 * np.arange(-5.0, 6.0), 5.0 + 0.1 * np.arange(-5.0, 6.0)
    flat = 45.0 + 0.1 * (np.arange(41.03, 48.9, 0.13) - 45)
    flon = 5.0 + 0.1 * (np.arange(1.21, 9.0, 0.17) - 5)
    axes = bilinear_weights(grid(clat, clon, flat, flon), scheme="conservative")
    names = (
        ("lat_coarse", "lon_coarse", clat, clon)
        if which == "coarse"
        else ("lat", "lon", flat, flon)
    )
    # centres a quarter cell off the cells' middles: the bounds, not the centres, tell
    ds = with_bounds(grid(clat, clon, flat, flon, placed=False), *names)
    n = clat.size * clon.size
    off = bilinear_weights(ds, scheme="conservative")
    assert np.abs(dense(off.index, off.weight, n) - dense(axes.index, axes.weight, n)).max() > 0.1
    for name in names[:2]:
        ds[name].attrs["bounds"] = f"{name}_bnds"
    got = bilinear_weights(ds, scheme="conservative")
    diff = np.abs(dense(got.index, got.weight, n) - dense(axes.index, axes.weight, n))
    assert diff.max() < 2e-3, diff.max()  # measured 7.9e-4 (coarse), 1.7e-3 (fine)


def test_a_fine_domain_beyond_the_curvilinear_coarse_grid_is_refused():
    clat, clon = np.arange(40.0, 46.0), np.arange(0.0, 11.0)
    ds = grid(clat, clon, np.arange(41.0, 48.0, 0.2), np.arange(1.0, 9.0, 0.2), placed=False)
    # the fine rows from 45.6 north (12 rows of 40) lie beyond the coarse cells' edge at 45.5
    with pytest.raises(CoverageError, match=r"does not cover 480 fine cell\(s\).*lat 45.8"):
        bilinear_weights(ds, scheme="conservative")


def test_slivers_beyond_the_four_largest_overlaps_are_dropped_and_wider_cells_refused():
    clat, clon = np.arange(40.0, 48.0), np.arange(0.0, 8.0)

    def pair(step: float) -> xr.Dataset:  # fine cells about one coarse cell wide, on them
        lat, lon = 42.0 + step * np.arange(4), 2.0 + step * np.arange(4)
        return grid(clat, clon, lat, lon, placed=False)

    # 0.05 % wider: up to eight overlaps each, all but four of them specks (< 2e-4)
    weights = bilinear_weights(pair(1.0005), scheme="conservative")
    under = np.arange(2, 6)[:, None] * clon.size + np.arange(2, 6)
    np.testing.assert_array_equal(weights.index[..., 0], under)
    assert weights.weight[..., 0].min() > 0.99
    # 1 % wider: the fifth overlap holds more than 1e-3 of a cell
    with pytest.raises(CoordinateError, match="overlap more than four coarse cells"):
        bilinear_weights(pair(1.01), scheme="conservative")


def test_fine_cells_wider_than_curvilinear_coarse_ones_are_refused():
    clat, clon = np.arange(40.0, 50.0, 0.1), np.arange(0.0, 10.0, 0.1)
    ds = grid(clat, clon, np.arange(42.0, 48.0, 0.5), np.arange(2.0, 8.0, 0.5), placed=False)
    with pytest.raises(CoordinateError, match="overlap more than four coarse cells.*'bilinear'"):
        bilinear_weights(ds, scheme="conservative")


def test_without_shapely_one_line_names_the_extra(monkeypatch):
    clat, clon = np.arange(40.0, 46.0), np.arange(0.0, 11.0)
    ds = grid(clat, clon, np.arange(41.0, 44.0, 0.2), np.arange(1.0, 9.0, 0.2), placed=False)
    monkeypatch.setitem(sys.modules, "shapely", None)  # as if not installed
    with pytest.raises(ImportError, match=r"needs shapely: pip install corrdiff_xr\[regrid\]"):
        bilinear_weights(ds, scheme="conservative")
