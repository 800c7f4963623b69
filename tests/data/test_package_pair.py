"""A user's ERA5 archive on a CorrDiff package's grids: the archive's own values at the
package's points (ARCO, cfgrib and CDS names; latitude descending; longitudes 0..360 or
-180..180), bilinear interpolation where the archive lacks them, lazily, and the inputs then
regridded to the output grid as Earth2Studio does."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import torch
import xarray as xr
from earth2studio.utils.interp import latlon_interpolation_regular

from corrdiff_xr.codec import Codec
from corrdiff_xr.data import DataError, DimensionError, MissingVariableError
from corrdiff_xr.data.package_pair import package_pair
from corrdiff_xr.testing import raise_if_dask_computes

TIMES = np.array(["2021-07-01T00", "2021-07-01T06"], dtype="datetime64[ns]")
HOURS = np.array([0.0, 6.0])
LEVELS = np.array([1000, 850, 500])  # hPa, as ARCO's `level`
LAT = np.arange(90.0, -90.1, -2.0)  # descending, as ERA5
LON360 = np.arange(0.0, 360.0, 2.0)
LON180 = np.arange(-180.0, 180.0, 2.0)

INPUT_LAT = np.arange(20.0, 40.1, 2.0)  # the package's input grid: increasing, across 0 E
INPUT_LON = np.arange(-10.0, 20.1, 2.0)
NY, NX = 12, 15
_y, _x = np.meshgrid(np.arange(NY), np.arange(NX), indexing="ij")
OUTPUT_GRID = xr.Dataset(  # a slightly sheared fine grid inside the input grid
    coords={
        "y": np.arange(NY),
        "x": np.arange(NX),
        "lat": (("y", "x"), 21.1 + 0.83 * _y + 0.05 * _x),
        "lon": (("y", "x"), -9.3 + 1.1 * _x + 0.04 * _y),
    }
)
LSM = (np.sin(_y / 3.0) * np.cos(_x / 4.0) > 0).astype(np.float32)
INVARIANTS = xr.Dataset({"lsm": (("y", "x"), LSM, {"units": "1", "long_name": "land-sea mask"})})
INPUTS = ("t2m", "u10m", "z500", "sst")
CODEC = Codec(
    INPUTS,
    ("t2m_km",),
    ("lsm",),
    {"t2m": (288.0, 12.0), "u10m": (0.1, 5.0), "z500": (5.6e4, 2e3), "sst": (290.0, 9.0),
     "lsm": (0.4, 0.5), "t2m_km": (288.0, 12.0)},
)  # fmt: skip


def input_grid(lat=INPUT_LAT, lon=INPUT_LON) -> xr.Dataset:
    return xr.Dataset(coords={"lat": lat, "lon": lon})


def truth(lat, lon, level=0.0, hour=0.0):
    """Smooth and periodic in longitude (so every convention holds the same values)."""
    phi, lam = np.deg2rad(lat), np.deg2rad(lon)
    return (
        250.0 + 30.0 * np.cos(phi) + 5.0 * np.sin(lam) + 2.0 * np.cos(3 * lam) * np.sin(2 * phi)
        + 0.02 * level + hour / 6.0
    )  # fmt: skip


def fields(lat, lon, dtype=np.float32) -> dict[str, np.ndarray]:
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    t = HOURS[:, None, None]
    sst = truth(la, lo, 5.0, t)
    sst = np.where((la > 30) & (np.mod(lo, 360) < 8), np.nan, sst)  # land
    z = np.stack([truth(la, lo, lev, t) * 200.0 for lev in LEVELS], axis=1)
    return {
        "t2m": truth(la, lo, 0.0, t).astype(dtype),
        "u10m": (truth(la, lo, 1.0, t) - 250.0).astype(dtype),
        "sst": sst.astype(dtype),
        "z": z.astype(dtype),
    }


def era5_archive(style="arco", lat=LAT, lon=LON360, dtype=np.float32, chunked=True):
    """An ERA5 archive as ARCO/WeatherBench2 (``arco``), cfgrib (``grib``) or the CDS's
    NetCDF (``cds``: ``valid_time``, ``pressure_level``) name it."""
    f = fields(lat, lon, dtype)
    wrap = (lambda a: da.from_array(a, chunks=(1,) + a.shape[1:])) if chunked else (lambda a: a)
    names = {
        "arco": ("2m_temperature", "10m_u_component_of_wind", "geopotential",
                 "sea_surface_temperature", "time", "level", "latitude", "longitude"),
        "grib": ("t2m", "u10", "z", "sst", "time", "isobaricInhPa", "latitude", "longitude"),
        "cds": ("t2m", "u10", "z", "sst", "valid_time", "pressure_level", "latitude", "longitude"),
    }[style]  # fmt: skip
    t2m, u10, z, sst, time, level, y, x = names
    grid = (time, y, x)
    ds = xr.Dataset(
        {
            t2m: (grid, wrap(f["t2m"]), {"units": "K", "long_name": "2 metre temperature"}),
            u10: (grid, wrap(f["u10m"]), {"units": "m s-1"}),
            z: ((time, level, y, x), wrap(f["z"]), {"units": "m2 s-2", "long_name": "Geopotential"}),
            sst: (grid, wrap(f["sst"]), {"units": "K"}),
        },
        coords={
            time: TIMES,
            level: (level, LEVELS, {"units": "millibars" if style == "arco" else "hPa"}),
            y: (y, lat, {"units": "degrees_north"}),
            x: (x, lon, {"units": "degrees_east"}),
        },
    )  # fmt: skip
    if style == "grib":  # cfgrib's scalar and auxiliary coordinates
        ds = ds.assign_coords(
            number=0, step=np.timedelta64(0, "ns"), surface=0.0, valid_time=(time, TIMES)
        )
    return ds


def pair_of(archive, **kwargs):
    kwargs = {"input_grid": input_grid(), "output_grid": OUTPUT_GRID, "name_map": None, **kwargs}
    return package_pair(archive, codec=CODEC, invariants=INVARIANTS, **kwargs)


def moved(grid: xr.Dataset, dlon: float) -> xr.Dataset:
    """The output grid moved ``dlon`` degrees east."""
    return grid.assign_coords(lon=grid["lon"] + dlon)


def expected(lat, lon, dtype=np.float32):
    """The archive's own values at (lat, lon) points of its grid, any longitude convention."""
    f = fields(LAT, LON360, dtype)
    rows = [int(np.flatnonzero(np.isclose(LAT, v))[0]) for v in lat]
    cols = [int(np.flatnonzero(np.isclose(LON360, np.mod(v, 360)))[0]) for v in lon]
    pick = np.ix_(rows, cols)
    return {
        "t2m": f["t2m"][:, pick[0], pick[1]],
        "u10m": f["u10m"][:, pick[0], pick[1]],
        "sst": f["sst"][:, pick[0], pick[1]],
        "z500": f["z"][:, 2][:, pick[0], pick[1]],
    }


def test_an_era5_archive_gives_its_own_values_at_the_package_points():
    archive = era5_archive()
    with raise_if_dask_computes():
        pair = pair_of(archive)
    ds = pair.dataset
    assert (pair.inputs, pair.targets, pair.static) == (INPUTS, (), ("lsm",))
    np.testing.assert_array_equal(ds["y_coarse"], INPUT_LAT)
    np.testing.assert_array_equal(ds["x_coarse"], INPUT_LON)  # the package's convention
    assert ds["y_coarse"].attrs["standard_name"] == "latitude"
    assert pair.regrid_weights.method == "latlon"
    want = expected(INPUT_LAT, INPUT_LON)
    for name in INPUTS:
        assert ds[name].dims == ("time", "y_coarse", "x_coarse")
        assert ds[name].dtype == np.float32
        np.testing.assert_array_equal(ds[name].values, want[name])  # bit for bit
    la, lo = np.meshgrid(INPUT_LAT, INPUT_LON, indexing="ij")
    np.testing.assert_allclose(ds["z500"].values[1], 200 * truth(la, lo, 500, 6.0), rtol=1e-6)
    land = np.isnan(ds["sst"].values[0])
    assert land.any() and (land == ((la > 30) & (np.mod(lo, 360) < 8))).all()
    assert ds["z500"].attrs["units"] == "m2 s-2"
    assert ds["z500"].attrs["long_name"] == "Geopotential at 500 hPa"
    assert ds["u10m"].attrs["long_name"] == "10 metre U wind component"  # names.py's
    assert pair.stats["z500"].values.tolist() == [5.6e4, 2e3]
    np.testing.assert_array_equal(pair.static_fields["lsm"], LSM)


@pytest.mark.parametrize("style", ["grib", "cds"])
def test_cfgrib_and_cds_names_give_the_same_pair(style):
    arco = pair_of(era5_archive("arco")).dataset
    other = pair_of(era5_archive(style)).dataset
    for name in INPUTS:
        np.testing.assert_array_equal(other[name].values, arco[name].values)
    np.testing.assert_array_equal(other["time"], TIMES)


@pytest.mark.parametrize(
    ("archive_lon", "package_lon"),
    [
        (LON180, INPUT_LON),  # -180..180 archive, a package grid across 0 E
        (LON180, np.arange(170.0, 200.1, 2.0)),  # a package grid across the date line
        (LON360, np.arange(-190.0, -159.9, 2.0)),  # the same, written west of -180
    ],
)
def test_longitude_conventions_do_not_change_the_values(archive_lon, package_lon):
    pair = pair_of(
        era5_archive(lon=archive_lon),
        input_grid=input_grid(lon=package_lon),
        output_grid=moved(OUTPUT_GRID, package_lon[0] - INPUT_LON[0]),
    )
    want = expected(INPUT_LAT, package_lon)
    for name in INPUTS:
        np.testing.assert_array_equal(pair.dataset[name].values, want[name])


def test_levels_in_pa_and_single_level_grib_files():
    plev = era5_archive("cds").rename(pressure_level="plev")
    plev = plev.assign_coords(plev=("plev", LEVELS * 100.0, {"units": "Pa"}))
    z500 = expected(INPUT_LAT, INPUT_LON)["z500"]
    np.testing.assert_array_equal(pair_of(plev).dataset["z500"].values, z500)
    # cfgrib reads a file of one level as a scalar isobaricInhPa coordinate
    single = era5_archive("grib").sel(isobaricInhPa=500)
    assert single["isobaricInhPa"].ndim == 0
    np.testing.assert_array_equal(pair_of(single).dataset["z500"].values, z500)


def test_a_name_map_entry_wins_over_the_package_name():
    archive = era5_archive()
    archive["t2m"] = archive["2m_temperature"] * 0  # a wrong field under the package's name
    archive["t2m"].attrs = {"units": "K"}
    pair = pair_of(archive, name_map={"t2m": "2m_temperature"})
    np.testing.assert_array_equal(pair.dataset["t2m"].values, expected(INPUT_LAT, INPUT_LON)["t2m"])
    assert pair_of(archive).dataset["t2m"].values.max() == 0  # no map: the package name


def test_an_input_renamed_for_the_codec_is_looked_up_by_its_package_name():
    # a package with t2m in and out: the codec's input is t2m_coarse (model.packages)
    codec = Codec(
        ("t2m_coarse", "z500"), ("t2m",), (), {n: (1.0, 2.0) for n in ("t2m_coarse", "z500", "t2m")}
    )
    want = expected(INPUT_LAT, INPUT_LON)["t2m"]
    archive = era5_archive("grib")
    for kwargs in ({}, {"input_names": {"t2m_coarse": "t2m"}}, {"name_map": {"t2m_coarse": "t2m"}}):
        pair = package_pair(
            archive, codec=codec, input_grid=input_grid(), output_grid=OUTPUT_GRID,
            invariants=None, **kwargs,
        )  # fmt: skip
        assert pair.inputs == ("t2m_coarse", "z500")
        assert pair.inputs_on_fine["z500"].shape == (2, NY, NX)  # no invariants: grid kept
        np.testing.assert_array_equal(pair.dataset["t2m_coarse"].values, want)
    with pytest.raises(DataError, match="package input 't2m': archive has no 'air' \\(name_map\\)"):
        package_pair(
            archive, codec=codec, input_grid=input_grid(), output_grid=OUTPUT_GRID,
            invariants=None, name_map={"t2m": "air"},
        )  # fmt: skip


def hand_bilinear(values: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Bilinear interpolation written out from the four surrounding points of the 2-degree
    global archive (``values`` on ``LAT`` x ``LON360``), at points ``lat``/``lon``."""
    rows = (90.0 - lat) / 2.0  # LAT is descending from 90
    r0 = np.floor(rows).astype(int)
    cols = np.mod(lon, 360.0) / 2.0
    c0 = np.floor(cols).astype(int)
    fy, fx = rows - r0, cols - c0
    c0 = c0 % LON360.size  # np.mod(-1e-15, 360) is 360
    r1, c1 = np.minimum(r0 + 1, LAT.size - 1), (c0 + 1) % LON360.size  # across the seam
    v = values.astype(np.float64)
    return (
        v[..., r0, c0] * (1 - fy) * (1 - fx) + v[..., r0, c1] * (1 - fy) * fx
        + v[..., r1, c0] * fy * (1 - fx) + v[..., r1, c1] * fy * fx
    )  # fmt: skip


@pytest.mark.parametrize(
    ("lat", "lon"),
    [
        (np.arange(20.5, 41, 1.5), np.arange(-10.3, 21, 0.7)),  # regional, across 0 E
        (np.arange(-88.5, 89, 1.5), np.arange(-179.25, 180, 1.5)),  # global: across the seam
    ],
)
def test_bilinear_interpolates_an_archive_that_lacks_the_points(lat, lon):
    with raise_if_dask_computes():
        pair = pair_of(era5_archive(), input_grid=input_grid(lat, lon), regrid="bilinear")
    f = fields(LAT, LON360)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    for name, field in (("t2m", f["t2m"]), ("z500", f["z"][:, 2])):
        got = pair.dataset[name].values
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, hand_bilinear(field, la, lo), rtol=1e-6)


def test_a_curvilinear_input_grid_is_interpolated_and_placed_by_its_lat_lon():
    i, j = np.meshgrid(np.arange(14), np.arange(20), indexing="ij")
    lat2, lon2 = 18.0 + 1.6 * i + 0.2 * j, -12.0 + 1.7 * j - 0.3 * i
    grid = xr.Dataset(
        coords={"lat": (("y_coarse", "x_coarse"), lat2), "lon": (("y_coarse", "x_coarse"), lon2)}
    )
    pair = pair_of(era5_archive(), input_grid=grid, regrid="bilinear")
    assert pair.dataset["t2m"].dims == ("time", "y_coarse", "x_coarse")
    np.testing.assert_array_equal(pair.dataset["lat_coarse"], lat2)
    np.testing.assert_allclose(
        pair.dataset["t2m"].values, hand_bilinear(fields(LAT, LON360)["t2m"], lat2, lon2), rtol=1e-6
    )
    assert pair.regrid_weights.method == "sphere"
    # exact points: a curvilinear grid made of archive points is taken as it is
    exact = grid.assign_coords(lat=grid["lat"].round(0) // 2 * 2, lon=grid["lon"].round(0) // 2 * 2)
    got = pair_of(era5_archive(), input_grid=exact).dataset["t2m"].values
    np.testing.assert_array_equal(
        got,
        hand_bilinear(fields(LAT, LON360)["t2m"], exact["lat"].values, exact["lon"].values).astype(
            np.float32
        ),
    )


def _boom(block):
    raise AssertionError("archive data was read")


@pytest.mark.parametrize("regrid", [None, "bilinear"])
def test_pairing_reads_no_array_data(regrid):
    archive = era5_archive()
    for name in archive.data_vars:
        var = archive[name]
        archive[name] = var.copy(data=var.data.map_blocks(_boom, dtype=var.dtype))
    grid = input_grid() if regrid is None else input_grid(INPUT_LAT + 0.5)
    with raise_if_dask_computes():
        pair = pair_of(archive, input_grid=grid, regrid=regrid)
        fine = pair.inputs_on_fine
    assert all(v.chunks is not None for v in fine.data_vars.values())
    with pytest.raises(AssertionError, match="archive data was read"):
        fine["t2m"].compute(scheduler="sync")


@pytest.mark.parametrize("chunks", [None, {}])
def test_a_zarr_archive_is_not_read(tmp_path, chunks):
    era5_archive().to_zarr(tmp_path / "era5.zarr", consolidated=False)
    for name in (
        "2m_temperature",
        "10m_u_component_of_wind",
        "geopotential",
        "sea_surface_temperature",
    ):
        for chunk in (tmp_path / "era5.zarr" / name).rglob("c/**/*"):
            if chunk.is_file():
                chunk.write_bytes(b"not a chunk")  # reading it fails
    archive = xr.open_zarr(tmp_path / "era5.zarr", chunks=chunks, consolidated=False)
    pair = pair_of(archive)
    with pytest.raises(Exception) as err:
        pair.inputs_on_fine["z500"].compute()
    assert not isinstance(err.value, DataError)  # a decoding error: the data was never read


def test_an_archive_in_memory_comes_back_lazy():
    pair = pair_of(era5_archive(chunked=False))
    assert all(pair.dataset[n].chunks is not None for n in INPUTS)
    np.testing.assert_array_equal(pair.dataset["t2m"].values, expected(INPUT_LAT, INPUT_LON)["t2m"])


def test_inputs_on_the_output_grid_equal_earth2studio_bilinear():
    pair = pair_of(era5_archive(dtype=np.float64))
    fine = pair.inputs_on_fine
    lat1, lon1 = (torch.as_tensor(OUTPUT_GRID[c].values) for c in ("lat", "lon"))
    for name in INPUTS:
        coarse = torch.as_tensor(pair.dataset[name].values)
        ref = latlon_interpolation_regular(
            coarse, torch.as_tensor(INPUT_LAT), torch.as_tensor(INPUT_LON), lat1, lon1
        ).numpy()
        got = fine[name].values
        if name == "sst":  # NaN over land: on a coarse grid line a NaN corner of weight 0
            # spoils our value, not Earth2Studio's (which takes the cell below)
            assert np.isnan(got).sum() > 0 and np.isnan(got)[np.isnan(ref)].all()
            got, ref = got[~np.isnan(got)], ref[~np.isnan(got)]
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    # float32 archives are regridded in float32: the same to float32 rounding
    fine32 = pair_of(era5_archive()).inputs_on_fine["z500"].values
    np.testing.assert_allclose(fine32, fine["z500"].values, rtol=1e-6)


REFUSALS = {
    "no variable": (
        lambda a: a.drop_vars("geopotential"), {},
        "package input 'z500': archive has no 'z500' (package name), no 'geopotential' at 500 "
        "hPa (ERA5/ARCO), no 'z' at 500 hPa (GRIB); pass name_map={'z500': ",
    ),
    "wrong map": (
        lambda a: a, {"name_map": {"z500": "z"}}, "archive has no 'z' (name_map); fix name_map['z500']"
    ),
    "no level": (
        lambda a: a, {"name_map": {"z500": {"variable": "geopotential", "level": 300}}},
        "has no level 300 hPa on 'level' (it has 1000, 850, 500 hPa)",
    ),
    "level not picked": (
        lambda a: a, {"name_map": {"z500": "geopotential"}},
        "has 3 levels on 'level'; pick one: name_map={NAME: {'variable': 'geopotential', 'level': 1000}}",
    ),
    "no level dim": (
        lambda a: a, {"name_map": {"t2m": {"variable": "2m_temperature", "level": 500}}},
        "package input 't2m' (archive '2m_temperature' at 500 hPa) has no level dim",
    ),
    "no time": (lambda a: a.isel(time=0, drop=True), {}, "package input 't2m' (archive '2m_temperature'): no time axis"),
    "extra dim": (
        lambda a: a.expand_dims(number=2), {}, "has a dim 'number' of length 2 besides time and the grid; select one"
    ),
    "no units": (
        lambda a: a.assign(sea_surface_temperature=a["sea_surface_temperature"].assign_attrs(units="")), {},
        "package input 'sst' (archive 'sea_surface_temperature') has no 'units' attribute; set "
        "coarse['sea_surface_temperature'].attrs['units'] (the package expects 'K')",
    ),
    "points missing": (
        lambda a: a, {"input_grid": input_grid(INPUT_LAT + 1)},
        "the archive has no latitude 21 of the package's input grid (its latitudes -90..90 every 2); pass regrid='bilinear'",
    ),
    "not covered": (
        lambda a: a.sel(latitude=slice(90, 30)), {"input_grid": input_grid(INPUT_LAT + 1), "regrid": "bilinear"},
        "its latitudes 30..90 do not cover the package's input grid 21..41",
    ),
    "regional lon": (
        lambda a: a.sel(longitude=slice(0, 40)), {"input_grid": input_grid(INPUT_LAT + 1), "regrid": "bilinear"},
        "its longitudes 0..40 do not cover the package's input grid -10..20",
    ),
    "no invariant": (
        lambda a: a, {"invariants": INVARIANTS.rename(lsm="land")}, "package invariant 'lsm' is not in the invariants (they have ['land'])"
    ),
    "bad input grid": (
        lambda a: a, {"input_grid": xr.Dataset(coords={"latitude": INPUT_LAT, "lon": INPUT_LON})},
        "package input grid: no 'lat'",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", REFUSALS)
def test_bad_inputs_are_refused_in_one_line_naming_the_variable_and_the_fix(case):
    change, kwargs, words = REFUSALS[case]
    kwargs = {"input_grid": input_grid(), "invariants": INVARIANTS, "name_map": None, **kwargs}
    with pytest.raises(DataError) as err:
        package_pair(change(era5_archive()), codec=CODEC, output_grid=OUTPUT_GRID, **kwargs)
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def test_an_unknown_regrid_choice_is_refused():
    with pytest.raises(ValueError, match="regrid must be None or 'bilinear'"):
        pair_of(era5_archive(), regrid="nearest")


def _km_truth(times, shape=(NY, NX)) -> xr.Dataset:
    values = np.arange(len(times) * shape[0] * shape[1], dtype=np.float32).reshape(
        len(times), *shape
    )
    return xr.Dataset(
        {
            "t2m_km": (
                ("time", "rlat", "rlon"),
                values,
                {"units": "K", "long_name": "2 m temperature"},
            )
        },
        coords={"time": times},
    )


def test_truth_on_the_output_grid_becomes_the_targets_at_common_times():
    later = np.append(TIMES[1:], np.datetime64("2021-07-01T12", "ns"))
    pair = pair_of(era5_archive(), truth=_km_truth(later))
    assert pair.targets == ("t2m_km",)
    np.testing.assert_array_equal(pair.dataset["time"].values, TIMES[1:])  # the shared time only
    np.testing.assert_array_equal(pair.fine["t2m_km"].values[0], _km_truth(later)["t2m_km"][0])
    assert pair.stats["t2m_km"].sel(stat="std").item() == 12.0  # the package's statistics


def test_truth_on_another_grid_is_refused_in_one_line():
    with pytest.raises(DimensionError, match=r"truth 't2m_km'.*shape \(12, 15\)"):
        pair_of(era5_archive(), truth=_km_truth(TIMES, shape=(NY, NX + 1)))
    with pytest.raises(MissingVariableError, match=r"truth has no \['t2m_km'\]"):
        pair_of(era5_archive(), truth=_km_truth(TIMES).rename(t2m_km="tas"))
