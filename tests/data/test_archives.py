"""Pairs from separate native archives (ERA5-like coarse, rotated-pole fine, orography on a
larger grid), opened lazily, with their conventions adopted rather than rejected."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

from corrdiff_xr.data import (
    CoverageError,
    DataError,
    DimensionError,
    DTypeError,
    NameClashError,
    TimeAxisError,
    open_pair,
)
from corrdiff_xr.data.archives import NOTES_ATTR, open_archives
from corrdiff_xr.data.sources.native_example import native_archives
from corrdiff_xr.testing import raise_if_dask_computes

COARSE_MAP = {"2m_temperature": "tas_coarse", "10m_u_component_of_wind": "uas_coarse"}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("archives")
    paths = {}
    for name, ds in native_archives(nt=12).items():
        paths[name] = str(root / f"{name}.zarr")
        ds.chunk({d: 4 for d in ds.dims if d == "time"}).to_zarr(paths[name], mode="w")
    return paths


def _pair(stores, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return open_archives(
            {"url": stores["coarse"], "variables": COARSE_MAP}, stores["fine"],
            stores["orography"], **kw,
        )  # fmt: skip


def test_native_archives_pair_lazily_into_the_canonical_layout(stores):
    # one compute: the static field's values are checked (NaN/inf) on the fine domain
    with raise_if_dask_computes(1), pytest.warns(UserWarning, match="dropped 8 coarse"):
        pair = open_archives(
            {"url": stores["coarse"], "variables": COARSE_MAP}, stores["fine"], stores["orography"]
        )
    assert (pair.inputs, pair.targets, pair.static) == (
        ("tas_coarse", "uas_coarse"),
        ("tas", "uas"),
        ("orog",),
    )
    ds = pair.dataset
    assert ds["tas"].dims == ("time", "y", "x") and ds["tas_coarse"].dims == (
        "time",
        "y_coarse",
        "x_coarse",
    )
    # the fine archive is 3-hourly: its 4 times are kept, the 8 coarse times between dropped
    fine = xr.open_zarr(stores["fine"])
    np.testing.assert_array_equal(ds["time"].values, fine["time"].values)
    notes = ds.attrs[NOTES_ATTR]
    assert "squeezed singleton dim 'height'" in notes
    # the time bounds are kept (lazily) as a CF bounds coordinate of the pair's time
    assert "bounds ['time_bnds'] kept as ['time_bnds']" in notes
    assert ds["time_bnds"].dims == ("time", "bnds") and ds["time"].attrs["bounds"] == "time_bnds"
    assert "cropped (181, 360)" in notes
    # the rotated grid and its geographic positions come through unchanged
    np.testing.assert_array_equal(ds["y"].values, fine["rlat"].values)
    np.testing.assert_allclose(ds["lat"].values, fine["lat"].values)
    assert ds["y"].attrs["standard_name"] == "grid_latitude"
    # the grid mapping is a coordinate, named by every variable on the fine grid
    assert ds["rotated_pole"].attrs["grid_mapping_name"] == "rotated_latitude_longitude"
    assert {ds[n].attrs["grid_mapping"] for n in ("tas", "uas", "orog")} == {"rotated_pole"}
    # NaN over the sea stays NaN (masked in training), land values are the archive's
    tas = ds["tas"].values
    np.testing.assert_array_equal(tas, fine["tas"].isel(height=0).values)
    assert np.isnan(tas).any() and np.isfinite(tas).any()
    np.testing.assert_array_equal(ds["time_bnds"].values, fine["time_bnds"].values)


def test_packed_int16_is_decoded_and_raw_integers_are_refused(stores):
    pair = _pair(stores)
    decoded = pair.dataset["tas_coarse"]
    assert np.issubdtype(decoded.dtype, np.floating)
    exact = native_archives(nt=12)["coarse"]["2m_temperature"]
    lat, lon = decoded["y_coarse"].values, decoded["x_coarse"].values % 360
    want = exact.sel(latitude=lat, longitude=lon, time=decoded["time"]).values
    np.testing.assert_allclose(decoded.values, want, atol=0.001 + 1e-6)  # half a step of 0.002
    raw = xr.open_zarr(stores["coarse"], mask_and_scale=False)
    with pytest.raises(DTypeError, match="'2m_temperature' holds raw int16.*mask_and_scale=True"):
        open_archives({"dataset": raw, "variables": COARSE_MAP}, stores["fine"])


def _linear(lat, lon):
    return 3.0 * lat + 0.5 * lon


@pytest.mark.parametrize(
    ("lons", "wrap", "pacific"),
    [
        (np.arange(0.0, 360.0, 1.0), lambda x: (x + 180) % 360 - 180, False),  # global 0..360
        (
            np.r_[np.arange(0.0, 20.0), np.arange(340.0, 360.0)],
            lambda x: (x + 180) % 360 - 180,
            False,
        ),
        (np.arange(-180.0, 180.0, 1.0), lambda x: x % 360, True),  # a domain across 180
    ],
    ids=["global-0-360", "regional-across-0", "across-180"],
)
def test_coarse_longitudes_are_unwrapped_around_the_domain(lons, wrap, pacific):
    """Bilinear interpolation of a field linear in (lat, lon) is exact: a known answer."""
    arch = native_archives(nt=3, fine_step_hours=1)
    fine = arch["fine"]
    if pacific:  # move the domain to 177.5 E, across the antimeridian (its pole too)
        fine = fine.assign_coords(lon=(fine["lon"] + 360.0) % 360 - 180)
        pole = fine["rotated_pole"].attrs["grid_north_pole_longitude"] - 180.0
        fine["rotated_pole"] = (
            fine["rotated_pole"].copy().assign_attrs(grid_north_pole_longitude=pole)
        )
    lat = np.arange(60.0, 40.0, -1.0)  # descending
    glat, glon = np.meshgrid(lat, lons, indexing="ij")
    field = np.broadcast_to(_linear(glat, wrap(glon)), (3, *glat.shape)).astype(np.float64)
    coarse = xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), field, {"units": "K", "long_name": "t"})},
        coords={
            "time": fine["time"].values,
            "latitude": ("latitude", lat, {"units": "degrees_north"}),
            "longitude": ("longitude", lons, {"units": "degrees_east"}),
        },
    )
    pair = open_archives({"dataset": coarse, "variables": {"t2m": "t2m_c"}}, fine)
    x = pair.dataset["x_coarse"].values
    assert (np.diff(x) > 0).all() and np.ptp(x) < 12  # a contiguous window, not the globe
    got = pair.inputs_on_fine["t2m_c"].isel(time=0).values
    want = _linear(pair.dataset["lat"].values, wrap(pair.dataset["lon"].values))
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_a_coarse_archive_that_misses_the_domain_is_refused():
    arch = native_archives(nt=3, fine_step_hours=1)
    far = arch["coarse"].sel(longitude=slice(30, 60))
    with pytest.raises(CoverageError):
        open_archives({"dataset": far, "variables": COARSE_MAP}, arch["fine"])


def test_axes_are_found_from_cf_metadata_not_names():
    arch = native_archives(nt=3, fine_step_hours=1)
    odd = arch["coarse"].rename({"latitude": "southnorth", "longitude": "westeast", "time": "t"})
    pair = open_archives({"dataset": odd, "variables": COARSE_MAP}, arch["fine"])
    assert pair.dataset.sizes["y_coarse"] > 1
    bare = odd.assign_coords(southnorth=odd["southnorth"].values)  # no attributes left
    with pytest.raises(DimensionError, match="no Y \\(latitude\\) axis.*axis='Y'"):
        open_archives({"dataset": bare, "variables": COARSE_MAP}, arch["fine"])


def _two_levels(coarse: xr.Dataset, offset: float) -> xr.Dataset:
    """The coarse archive at 850 hPa and, ``offset`` higher, at 500 hPa (a ``level`` dim)."""
    levels = xr.concat([coarse, coarse + offset], dim="level")
    levels = levels.assign_coords(level=("level", [850, 500], {"units": "hPa"}))
    for name in COARSE_MAP:
        levels[name].attrs = coarse[name].attrs
    return levels


def test_a_dim_that_is_neither_time_nor_grid_needs_a_selection():
    arch = native_archives(nt=3, fine_step_hours=1)
    levels = _two_levels(arch["coarse"], 1)
    with pytest.raises(DimensionError, match="dim 'level' of size 2.*select=\\{'level'"):
        open_archives({"dataset": levels, "variables": COARSE_MAP}, arch["fine"])
    pair = open_archives(
        {"dataset": levels, "variables": COARSE_MAP, "select": {"level": 500}}, arch["fine"]
    )
    np.testing.assert_allclose(
        pair.dataset["uas_coarse"].values,
        open_archives({"dataset": arch["coarse"], "variables": COARSE_MAP}, arch["fine"])
        .dataset["uas_coarse"].values + 1,
        rtol=1e-6,
    )  # fmt: skip


def test_static_fields_are_cut_from_a_larger_grid_or_regridded_from_another(stores):
    pair = _pair(stores)
    big = xr.open_zarr(stores["orography"])["orog"]
    cut = big.isel(rlat=slice(8, -8), rlon=slice(8, -8)).values
    np.testing.assert_array_equal(pair.dataset["orog"].values, cut)  # exact, no interpolation
    # on a regular lat/lon grid instead: bilinear, exact for a linear field
    lat, lon = np.arange(45.0, 56.0, 0.5), np.arange(-10.0, 5.0, 0.5)
    glat, glon = np.meshgrid(lat, lon, indexing="ij")
    orog = xr.Dataset(
        {"z": (("lat", "lon"), _linear(glat, glon), {"units": "m", "long_name": "orography"})},
        coords={"lat": ("lat", lat, {"units": "degrees_north"}),
                "lon": ("lon", lon, {"units": "degrees_east"})},
    )  # fmt: skip
    arch = native_archives(nt=3, fine_step_hours=1)
    with raise_if_dask_computes(1):  # the static values check only
        pair = open_archives(
            {"dataset": arch["coarse"], "variables": COARSE_MAP}, arch["fine"], orog
        )
    want = _linear(pair.dataset["lat"].values, pair.dataset["lon"].values)
    np.testing.assert_allclose(pair.dataset["z"].values, want, atol=1e-9)
    assert "regridded bilinearly" in pair.dataset.attrs[NOTES_ATTR]


def test_times_match_exactly_or_to_the_nearest_within_a_tolerance():
    arch = native_archives(nt=12)
    late = arch["fine"].assign_coords(time=arch["fine"]["time"] + np.timedelta64(10, "m"))
    coarse = {"dataset": arch["coarse"], "variables": COARSE_MAP}
    with pytest.raises(TimeAxisError, match="no fine time matches a coarse time"):
        open_archives(coarse, late)
    with pytest.warns(UserWarning, match="paired 4 times \\(nearest within 15min\\)"):
        pair = open_archives(coarse, late, match="nearest", tolerance="15min")
    np.testing.assert_array_equal(pair.dataset["time"].values, late["time"].values)
    with pytest.warns(UserWarning):
        part = open_archives(
            coarse, arch["fine"], time={"start": "2001-02-27T03", "end": "2001-02-27T06"}
        )
    assert part.dataset.sizes["time"] == 2


def test_cftime_calendars_pair_with_dates_only_their_calendar_has():
    arch = native_archives(nt=72, calendar="360_day", start="2001-02-28")
    with pytest.warns(UserWarning):
        pair = open_archives(
            {"dataset": arch["coarse"], "variables": COARSE_MAP}, arch["fine"],
            time={"start": "2001-02-30T00", "end": "2001-02-30T23"},
        )  # fmt: skip
    times = pair.dataset["time"].values
    assert len(times) == 8 and {(t.month, t.day, t.calendar) for t in times} == {(2, 30, "360_day")}
    with pytest.raises(TimeAxisError, match="calendar"):
        standard = native_archives(nt=72, start="2001-02-28")["fine"]
        open_archives({"dataset": arch["coarse"], "variables": COARSE_MAP}, standard)


def test_clashing_names_point_to_the_variables_map():
    arch = native_archives(nt=3, fine_step_hours=1)
    fine = arch["fine"].rename({"tas": "2m_temperature"})
    with pytest.raises(NameClashError, match="variables map"):
        open_archives({"dataset": arch["coarse"]}, fine)


def test_a_window_of_the_fine_grid(stores):
    pair = _pair(stores, window={"y": [4, 20], "x": [0, 16]})
    assert (pair.dataset.sizes["y"], pair.dataset.sizes["x"]) == (16, 16)
    np.testing.assert_array_equal(
        pair.dataset["orog"].values,
        xr.open_zarr(stores["orography"])["orog"].values[12:28, 8:24],
    )


def test_convert_copies_a_catalog_pair_into_a_canonical_store(stores, tmp_path):
    from corrdiff_xr.cli import main

    params = [f"coarse_url={stores['coarse']}", f"fine_url=file://{stores['fine']}",
              f"orography_url={stores['orography']}", "end=2001-02-27T06"]  # fmt: skip
    dest = tmp_path / "copy.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert (
            main(["convert", "source", "catalog:archives/pair", str(dest), "--param", *params]) == 0
        )
    copy, pair = open_pair(str(dest)), _pair(stores, time={"end": "2001-02-27T06"})
    assert copy.names == pair.names and copy.stored_stats is not None
    for name in pair.names:
        np.testing.assert_array_equal(copy.dataset[name].values, pair.dataset[name].values)
    np.testing.assert_allclose(copy.stats["tas"].values, pair.stats["tas"].values, rtol=1e-6)


def test_a_pair_refers_only_to_archive_entries_of_its_catalog(tmp_path):
    import yaml

    from corrdiff_xr.data import CatalogError
    from corrdiff_xr.data.catalog import catalog_dir, open_entry

    spec = yaml.safe_load((catalog_dir() / "archives.yaml").read_text())
    pair = spec["entries"]["pair"]
    for target, message in (("nowhere", "no entry 'nowhere'"), ("zarr", "not an ArchiveReader")):
        spec["entries"]["zarr"] = {
            "reader": "corrdiff_xr.data.catalog:ZarrPairReader", "kwargs": {"url": "x.zarr"},
            "user_parameters": {}, "metadata": {},
            "output_instance": "corrdiff_xr.data:DownscalingData",
        }  # fmt: skip
        pair["kwargs"]["coarse"] = {"entry": target}
        path = tmp_path / f"{target}.yaml"
        path.write_text(yaml.safe_dump(spec))
        with pytest.raises(CatalogError, match=f"entry 'pair', coarse: .*{message}"):
            open_entry(path, "pair")


def test_several_coarse_archives_give_one_variable_at_several_levels():
    arch = native_archives(nt=6, fine_step_hours=1)
    levels = _two_levels(arch["coarse"], 5)
    wind = {"10m_u_component_of_wind": "u"}
    pair = open_archives(
        [
            {"dataset": arch["coarse"], "variables": {"2m_temperature": "t2m"}},
            {"dataset": levels, "select": {"level": 850}, "variables": {"10m_u_component_of_wind": "u850"}},
            {"dataset": levels.isel(time=slice(1, None)), "select": {"level": 500}, "variables": wind},
        ],
        arch["fine"],
    )  # fmt: skip
    assert pair.inputs == ("t2m", "u", "u850")
    # the last archive lacks the first hour: the pair keeps the times every archive has
    assert pair.dataset.sizes["time"] == 5
    np.testing.assert_allclose(pair.dataset["u"].values, pair.dataset["u850"].values + 5, rtol=1e-6)
    with pytest.raises(DataError, match="cannot be merged"):
        moved = arch["coarse"].assign_coords(latitude=arch["coarse"]["latitude"] - 0.5)
        open_archives(
            [{"dataset": arch["coarse"], "variables": {"2m_temperature": "a"}},
             {"dataset": moved, "variables": {"2m_temperature": "b"}}],
            arch["fine"],
        )  # fmt: skip
