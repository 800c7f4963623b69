"""Regridding choices (bilinear, nearest, conservative) and coarse inputs made by block means
of the fine archive, against known answers: the nearer centre either side of a midpoint,
constants kept exactly, the area integral over the fine domain kept, numpy block means."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from test_catalog_security import _entry, write_catalog
from test_geographic_pairing import POLAR_SOUTH, SAFRICA, cfgrib

from corrdiff_xr.data import CoordinateError, DataError
from corrdiff_xr.data.archives import NOTES_ATTR, open_archives
from corrdiff_xr.data.catalog import open_entry
from corrdiff_xr.data.regrid import bilinear_weights, regrid
from corrdiff_xr.data.regrid_methods import REGRID_ATTR
from corrdiff_xr.testing import raise_if_dask_computes


def grid(clat, clon, flat, flon, *, placed=True, field=None) -> xr.Dataset:
    """A canonical pair's coordinates: a lat/lon coarse grid, a fine grid rectilinear in
    lat/lon (2-D ``flat``/``flon`` when given so); ``placed=False`` leaves only the coarse
    grid's 2-D lat/lon (curvilinear)."""
    glat, glon = np.meshgrid(clat, clon, indexing="ij")
    if np.ndim(flat) == 1:
        flat, flon = np.meshgrid(flat, flon, indexing="ij")
    coords = {
        "y_coarse": ("y_coarse", clat, {"standard_name": "latitude"} if placed else {}),
        "x_coarse": ("x_coarse", clon, {"standard_name": "longitude"} if placed else {}),
        "lat_coarse": (("y_coarse", "x_coarse"), glat),
        "lon_coarse": (("y_coarse", "x_coarse"), glon),
        "y": ("y", np.arange(flat.shape[0])),
        "x": ("x", np.arange(flat.shape[1])),
        "lat": (("y", "x"), flat),
        "lon": (("y", "x"), flon),
        "time": ("time", np.array(["2020-01-01"], dtype="datetime64[ns]")),
    }
    ds = xr.Dataset(coords=coords)
    if field is not None:
        ds["u"] = (("time", "y_coarse", "x_coarse"), field[None])
    return ds


def on_fine(ds: xr.Dataset, scheme: str) -> np.ndarray:
    weights = bilinear_weights(ds, scheme=scheme)
    return regrid(ds, ["u"], weights=weights)["u"].values[0]


def test_nearest_picks_the_nearer_coarse_centre_just_either_side_of_a_midpoint():
    clat, clon = np.array([10.0, 11.0, 12.0]), np.array([20.0, 21.0, 22.0, 23.0])
    field = 100.0 * np.arange(3)[:, None] + np.arange(4)[None, :]
    eps = 1e-6
    ds = grid(clat, clon, [10.5 - eps, 10.5 + eps], [21.5 - eps, 21.5 + eps], field=field)
    assert np.array_equal(on_fine(ds, "nearest"), [[1.0, 2.0], [101.0, 102.0]])
    # bilinear at the same points is the mean of the four, not a coarse value
    np.testing.assert_allclose(on_fine(ds, "bilinear"), 51.5, atol=1e-3)
    # descending latitude (ERA5's order) picks the same cells
    flipped = grid(clat[::-1], clon, [10.5 - eps, 10.5 + eps], [21.5 - eps, 21.5 + eps],
                   field=field[::-1])  # fmt: skip
    assert np.array_equal(on_fine(flipped, "nearest"), [[1.0, 2.0], [101.0, 102.0]])


def test_nearest_on_a_curvilinear_grid_is_the_nearest_coarse_point():
    clat, clon = np.linspace(10.0, 14.0, 5), np.linspace(20.0, 24.0, 5)
    field = 100.0 * np.arange(5)[:, None] + np.arange(5)[None, :]
    d = 0.01  # either side of the midpoints between rows 1/2 and columns 2/3
    ds = grid(clat, clon, [11.5 - d, 11.5 + d], [22.5 - d, 22.5 + d], placed=False, field=field)
    assert bilinear_weights(ds, scheme="nearest").method == "sphere"
    assert np.array_equal(on_fine(ds, "nearest"), [[102.0, 103.0], [202.0, 203.0]])


def _fine_axis(lo, hi, step):
    return np.arange(lo, hi, step)


def test_conservative_keeps_constants_and_the_area_integral_over_the_fine_domain():
    clat, clon = np.arange(40.0, 51.0), np.arange(0.0, 11.0)
    flat, flon = _fine_axis(41.03, 48.9, 0.13), _fine_axis(1.21, 9.0, 0.17)  # not aligned
    rng = np.random.default_rng(0)
    field = rng.normal(280.0, 10.0, (clat.size, clon.size))
    const = grid(clat, clon, flat, flon, field=np.full(field.shape, 273.15))
    # exact up to the last bit of w * c + (1 - w) * c
    np.testing.assert_allclose(on_fine(const, "conservative"), 273.15, rtol=1e-15, atol=0)
    # fine cells hanging over the outer coarse edges (accepted up to half a cell) too
    wide = grid(clat, clon, _fine_axis(39.52, 50.5, 0.13), _fine_axis(-0.48, 10.5, 0.17),
                field=np.full(field.shape, 273.15))  # fmt: skip
    np.testing.assert_allclose(on_fine(wide, "conservative"), 273.15, rtol=1e-15, atol=0)
    fine = on_fine(grid(clat, clon, flat, flon, field=field), "conservative")

    def edges(c):
        mid = 0.5 * (c[1:] + c[:-1])
        return np.concatenate([[2 * c[0] - mid[0]], mid, [2 * c[-1] - mid[-1]]])

    sin = lambda v: np.sin(np.deg2rad(v))  # noqa: E731  area on the sphere ~ d(sin lat) d(lon)
    fy, fx = edges(flat), edges(flon)
    fine_area = np.abs(np.diff(sin(fy)))[:, None] * np.abs(np.diff(fx))[None, :]
    # the coarse cells' parts inside the fine domain's outer edges, computed independently
    cy, cx = edges(clat), edges(clon)
    oy = np.clip(sin(np.minimum(cy[1:], fy[-1])) - sin(np.maximum(cy[:-1], fy[0])), 0, None)
    ox = np.clip(np.minimum(cx[1:], fx[-1]) - np.maximum(cx[:-1], fx[0]), 0, None)
    coarse_area = oy[:, None] * ox[None, :]
    fine_mean = (fine * fine_area).sum() / fine_area.sum()
    coarse_mean = (field * coarse_area).sum() / coarse_area.sum()
    assert abs(fine_mean - coarse_mean) < 1e-6, (fine_mean, coarse_mean)
    assert abs(fine_mean - field.mean()) > 1e-2  # a plain mean would not do


def test_conservative_matches_xarray_regrid_on_a_linear_axis():
    xarray_regrid = pytest.importorskip("xarray_regrid")
    del xarray_regrid
    clat, clon = np.arange(40.0, 51.0), np.arange(0.0, 11.0)
    flon = _fine_axis(1.21, 9.0, 0.17)
    field = np.random.default_rng(1).normal(size=(clat.size, clon.size))
    # xarray-regrid weighs latitude by whole source cells: compare along longitude only
    src = xr.DataArray(field, dims=("a", "lon"), coords={"lon": clon})
    theirs = src.regrid.conservative(xr.Dataset(coords={"lon": flon}), time_dim=None).values
    ours_lon = on_fine(grid(clat, clon, clat, flon, field=field), "conservative")
    np.testing.assert_allclose(ours_lon, theirs, rtol=1e-12, atol=1e-12)


def test_an_unknown_method_is_refused_naming_the_option_and_choices():
    fine = cfgrib(POLAR_SOUTH, SAFRICA, (16, 24), 12e3, name="tas")
    coarse = {"coarsen": {"y": 4, "x": 4}, "variables": {"tas": "tas_c"}}
    with pytest.raises(DataError, match=r"regrid='cubic' is not a regridding method"):
        open_archives(coarse, fine, regrid="cubic")
    with pytest.raises(DataError, match=r"coarsen x=5 .* dividing the fine 'x' size 24"):
        open_archives({**coarse, "coarsen": {"y": 4, "x": 5}}, fine)


@pytest.mark.parametrize("scheme", ["nearest", "conservative"])
def test_coarse_inputs_as_block_means_of_the_fine_archive_end_to_end(scheme):
    fine = cfgrib(POLAR_SOUTH, SAFRICA, (16, 24), 12e3, name="tas")
    coarse = {"coarsen": {"y": 4, "x": 4}, "variables": {"tas": "tas_c"}}
    lazy = fine.assign(tas=fine["tas"].chunk({"time": 1}))  # as a Zarr store opens
    with raise_if_dask_computes():  # block means and regridding stay lazy
        pair = open_archives(coarse, lazy, regrid=scheme)
        assert pair.coarse["tas_c"].chunks is not None
    values = fine["tas"].values
    blocks = values.reshape(values.shape[0], 4, 4, 6, 4).mean(axis=(2, 4))
    np.testing.assert_allclose(pair.coarse["tas_c"].values, blocks, rtol=1e-12)
    # each fine pixel lies inside its own block, so both schemes give back its block's mean
    on_fine = pair.inputs_on_fine["tas_c"]
    expected = np.repeat(np.repeat(blocks, 4, axis=1), 4, axis=2)
    np.testing.assert_allclose(on_fine.values, expected, rtol=1e-6)
    assert pair.regrid_weights.scheme == scheme
    assert on_fine.attrs["regridding"].startswith(scheme)
    assert f"regridded to the fine grid by {scheme}" in pair.dataset.attrs[NOTES_ATTR]
    assert pair.dataset.attrs[REGRID_ATTR] == scheme
    # a selection keeps the choice
    assert pair.isel(time=[0]).regrid_weights.scheme == scheme


def test_a_catalog_pair_entry_chooses_the_method_and_coarsens_the_fine_archive(tmp_path):
    fine = cfgrib(POLAR_SOUTH, SAFRICA, (16, 24), 12e3, name="tas")
    fine.to_zarr(tmp_path / "fine.zarr", consolidated=False)
    kwargs = {
        "coarse": {"coarsen": {"y": 4, "x": 4}, "variables": {"tas": "tas_c"}},
        "fine": {"url": str(tmp_path / "fine.zarr")},
        "regrid": "nearest",
    }
    entries = {"p": _entry(reader="corrdiff_xr.data.catalog:ArchivePairReader", kwargs=kwargs)}
    pair = open_entry(write_catalog(tmp_path / "c.yaml", entries=entries), "p")
    assert pair.regrid_weights.scheme == "nearest"
    values = fine["tas"].values
    blocks = values.reshape(values.shape[0], 4, 4, 6, 4).mean(axis=(2, 4))
    np.testing.assert_allclose(pair.coarse["tas_c"].values, blocks, rtol=1e-12)


def test_conservative_refuses_fine_cells_wider_than_coarse_ones():
    clat, clon = np.arange(40.0, 51.0), np.arange(0.0, 11.0)
    ds = grid(clat, clon, np.arange(41.0, 49.0, 2.5), np.arange(1.0, 9.0, 0.5))
    with pytest.raises(CoordinateError, match="overlap more than two coarse cells"):
        bilinear_weights(ds, scheme="conservative")
