"""Converters from the reference layouts (HRRR-Mini NetCDF, CWB Zarr) to the canonical one.

The fixture files are built here in the reference's exact layouts (as read by PhysicsNeMo's
``datasets/hrrrmini.py`` and ``datasets/cwb.py``).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from reference_layouts import NT, NX, NY, OFFSET, PARENT, F, _rng, _write_hrrr_mini  # noqa: F401

from corrdiff_xr._outputs import product_of
from corrdiff_xr.cli import main
from corrdiff_xr.data import open_pair
from corrdiff_xr.data.sources.reference import (
    ConversionError,
    cwb_to_canonical,
    hrrr_mini_to_canonical,
)
from corrdiff_xr.data.write import write_dataset


@pytest.fixture()
def hrrr_mini(tmp_path):
    path = tmp_path / "hrrr_mini_train.nc"
    data, times = _write_hrrr_mini(path, [OFFSET] * NT)
    return path, data, times


CWB_TARGETS = [
    "maximum_radar_reflectivity",
    "temperature_2m",
    "eastward_wind_10m",
    "northward_wind_10m",
]
ERA5 = [("geopotential_height", 500.0), ("temperature", 850.0), ("temperature_2m", np.nan)]


@pytest.fixture()
def cwb(tmp_path):
    """A CWB/Taiwan Zarr (v2, consolidated) in the reference's schema, time 2 invalid."""
    rng = _rng(1)
    path = tmp_path / "cwb.zarr"
    nt = 4
    ds = xr.Dataset(
        {
            "cwb": (
                ("time", "cwb_channel", "south_north", "west_east"),
                rng.normal(size=(nt, 4, NY, NX)).astype("f4"),
            ),
            "cwb_center": ("cwb_channel", np.array([1, 2, 3, 4], "f4")),
            "cwb_scale": ("cwb_channel", np.array([5, 6, 7, 8], "f4")),
            "cwb_valid": ("time", np.array([1, 1, 0, 1], "i1")),
            "era5": (
                ("time", "era5_channel", "south_north", "west_east"),
                rng.normal(size=(nt, 3, NY, NX)).astype("f4"),
            ),
            "era5_center": ("era5_channel", np.array([10, 20, 30], "f4")),
            "era5_scale": ("era5_channel", np.array([2, 3, 4], "f4")),
            "era5_valid": (("time", "era5_channel"), np.ones((nt, 3), bool)),
        },
        coords={
            "time": pd.date_range("2018-01-01", periods=nt, freq="h").values,
            "XLAT": (
                ("south_north", "west_east"),
                np.linspace(21, 26, NY)[:, None] + np.zeros((1, NX), "f4"),
            ),
            "XLONG": (
                ("south_north", "west_east"),
                np.linspace(118, 123, NX)[None, :] + np.zeros((NY, 1), "f4"),
            ),
            "cwb_variable": ("cwb_channel", np.array(CWB_TARGETS, dtype="<U26")),
            "cwb_pressure": ("cwb_channel", np.full(4, np.nan)),
            "era5_variable": ("era5_channel", np.array([v for v, _ in ERA5], dtype="<U19")),
            "era5_pressure": ("era5_channel", np.array([p for _, p in ERA5])),
        },
    )
    ds = ds.chunk({"time": 1})
    ds.to_zarr(path, zarr_format=2, consolidated=True, mode="w")
    # the reference opens it with plain zarr, not xarray: check our fixture reads that way
    group = zarr.open_consolidated(path)
    assert group["cwb"].shape == (nt, 4, NY, NX) and "time" in group
    return path, ds


def test_hrrr_mini_conversion_keeps_values_and_crops_invariants_to_the_window(hrrr_mini):
    path, data, times = hrrr_mini
    ds, stats = hrrr_mini_to_canonical(path, path.parent / "stats.json")
    assert ds["2t"].dims == ("time", "y", "x")
    assert ds["2t_coarse"].dims == ("time", "y_coarse", "x_coarse")
    np.testing.assert_array_equal(ds["time"].values, times.values)
    np.testing.assert_array_equal(ds["10u"].values, data["output", "10u"])
    np.testing.assert_array_equal(ds["tp_coarse"].values, data["input", "tp"])
    # the reference slices invariants at coord (i, j): inv[:, i:i+ny, j:j+nx]
    i, j = OFFSET
    np.testing.assert_array_equal(
        ds["elev_mean"].values, data["invariant", "elev_mean"][i : i + NY, j : j + NX]
    )
    np.testing.assert_allclose(
        ds["lat"].values, data["invariant", "latitude"][i : i + NY, j : j + NX]
    )
    # coarse pixel k sits at the centre of fine block k, as the reference's upsampling assumes
    assert np.allclose(ds["y_coarse"].values, i + (np.arange(NY // F) + 0.5) * F - 0.5)
    assert np.allclose(ds["lat_coarse"].values[0, 0], ds["lat"].values[:F, :F].mean())
    assert tuple(stats["2t_coarse"].values) == (2.0, 3.0)
    assert tuple(stats["lsm_mean"].values) == (0.5, 0.5)
    assert ds["2t"].attrs["units"] == "K" and ds["elev_mean"].attrs["units"] == "m"
    assert set(ds.data_vars) == {
        "10u",
        "10v",
        "2t",
        "tp",
        "10u_coarse",
        "10v_coarse",
        "2t_coarse",
        "tp_coarse",
        "elev_mean",
        "lsm_mean",
    }


def test_hrrr_mini_samples_in_several_windows_need_a_chosen_window(tmp_path):
    path = tmp_path / "moving.nc"
    coords = [(0, 0), OFFSET, OFFSET, (8, 8), OFFSET]
    data, times = _write_hrrr_mini(path, coords)
    stats_path = path.parent / "stats.json"
    with pytest.raises(ConversionError, match=r"3 different windows.*\(5, 3\): 3"):
        hrrr_mini_to_canonical(path, stats_path)
    ds, _ = hrrr_mini_to_canonical(path, stats_path, window="most_common")
    np.testing.assert_array_equal(ds["time"].values, times.values[[1, 2, 4]])
    np.testing.assert_array_equal(ds["2t"].values, data["output", "2t"][[1, 2, 4]])
    assert ds.attrs["dropped_samples_outside_window"] == 2
    ds, _ = hrrr_mini_to_canonical(path, stats_path, window=(8, 8))
    assert ds.sizes["time"] == 1
    np.testing.assert_array_equal(
        ds["lsm_mean"].values, data["invariant", "lsm_mean"][8 : 8 + NY, 8 : 8 + NX]
    )
    with pytest.raises(ConversionError, match=r"no sample has its window at \(1, 1\)"):
        hrrr_mini_to_canonical(path, stats_path, window=(1, 1))


def test_hrrr_mini_missing_stats_entry_names_it(hrrr_mini):
    path, *_ = hrrr_mini
    stats = json.loads((path.parent / "stats.json").read_text())
    del stats["output"]["tp"]
    (path.parent / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(ConversionError, match="output/tp"):
        hrrr_mini_to_canonical(path, path.parent / "stats.json")


def test_cwb_conversion_names_channels_drops_invalid_times_and_keeps_stats(cwb):
    path, src = cwb
    ds, stats = cwb_to_canonical(path)
    assert list(ds.time.values) == list(src.time.values[[0, 1, 3]])
    assert ds.attrs["dropped_invalid_times"] == 1
    assert list(ds.data_vars) == CWB_TARGETS + [
        "geopotential_height500_coarse",
        "temperature850_coarse",
        "temperature_2m_coarse",
    ]
    np.testing.assert_array_equal(ds["temperature_2m"].values, src["cwb"].values[[0, 1, 3], 1])
    np.testing.assert_array_equal(
        ds["temperature850_coarse"].values, src["era5"].values[[0, 1, 3], 1]
    )
    assert tuple(stats["northward_wind_10m"].values) == (4.0, 8.0)
    assert tuple(stats["temperature_2m_coarse"].values) == (30.0, 4.0)
    np.testing.assert_allclose(ds["lon_coarse"].values, src["XLONG"].values)
    assert ds["maximum_radar_reflectivity"].attrs["units"] == "dBZ"


def test_cwb_missing_array_is_refused_naming_it(cwb, tmp_path):
    _, src = cwb
    bad = tmp_path / "bad.zarr"
    src.drop_vars("era5_center").to_zarr(bad, zarr_format=2, consolidated=True)
    with pytest.raises(ConversionError, match="era5_center"):
        cwb_to_canonical(bad)


def test_cli_converts_cwb_to_a_store_with_stats_group(cwb, tmp_path, capsys):
    path, _ = cwb
    dest = tmp_path / "out" / "canonical.zarr"
    assert main(["convert", "cwb", str(path), str(dest), "--time-chunk", "2"]) == 0
    pair = open_pair(dest)
    assert sorted(pair.targets) == sorted(CWB_TARGETS) and len(pair.inputs) == 3
    assert pair.dataset["temperature_2m"].chunks[0] == (2, 1)
    # the stored statistics are the reference's center/scale, not recomputed ones
    assert tuple(pair.stats["eastward_wind_10m"].values) == (3.0, 7.0)
    # ERA5 already sits on the fine grid: regridding must be the identity
    np.testing.assert_allclose(
        pair.inputs_on_fine["temperature850_coarse"].values,
        pair.coarse["temperature850_coarse"].values,
        rtol=1e-6,
    )
    assert product_of(dest) == "convert"
    assert main(["convert", "cwb", str(path), str(dest)]) == 2
    assert "pass --overwrite to replace it" in capsys.readouterr().err
    assert main(["convert", "cwb", str(path), str(dest), "--overwrite", "--keep-invalid"]) == 0
    assert xr.open_zarr(dest).sizes["time"] == 4
    assert product_of(dest) == "convert"
    assert sorted(os.listdir(dest.parent)) == ["canonical.zarr"]  # no set-aside old store


def test_convert_never_replaces_a_users_directory_file_or_another_product(cwb, tmp_path, capsys):
    path, _ = cwb
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    table = tmp_path / "table.zarr"
    table.write_text("a file, not a store")
    scores = tmp_path / "scores.zarr"
    xr.Dataset({"a": ("t", np.arange(2.0))}, attrs={"corrdiff_xr_product": "score"}).to_zarr(scores)
    for dest, made in ((folder, "a directory"), (table, "a file"), (scores, "'score' output")):
        for extra in ([], ["--overwrite"]):
            assert main(["convert", "cwb", str(path), str(dest), *extra]) == 2
            err = capsys.readouterr().err
            assert f"destination {dest} exists and is" in err and made in err
    assert os.listdir(folder) == ["notes.txt"]
    assert (folder / "notes.txt").read_text() == "precious"
    assert table.read_text() == "a file, not a store"
    assert xr.open_zarr(scores)["a"].values.tolist() == [0.0, 1.0]
    # the library function applies the same rule
    with pytest.raises(FileExistsError, match="did not write"):
        write_dataset(xr.Dataset({"a": ("t", np.zeros(2))}), folder, kind="convert", overwrite=True)


def test_cli_converts_hrrr_mini_finding_stats_next_to_the_file(tmp_path):
    path = tmp_path / "hrrr_mini_train.nc"
    data, _ = _write_hrrr_mini(path, [OFFSET, (0, 0), OFFSET])
    dest = tmp_path / "hrrr.zarr"
    assert main(["convert", "hrrr-mini", str(path), str(dest), "--window", "5,3"]) == 0
    pair = open_pair(dest)
    np.testing.assert_array_equal(pair.fine["2t"].values, data["output", "2t"][[0, 2]])
    assert sorted(pair.static) == ["elev_mean", "lsm_mean"]
    assert tuple(pair.stats["elev_mean"].values) == (300.0, 200.0)


def test_failed_conversion_midway_leaves_nothing_behind(cwb, tmp_path):
    path, _ = cwb
    # corrupt the chunk of time step 3 on disk: reading fails after earlier chunks are written
    chunk = path / "cwb" / "3.0.0.0"
    assert chunk.exists()
    chunk.write_bytes(b"not a compressed chunk")
    dest = tmp_path / "dest.zarr"
    before = set(os.listdir(tmp_path))
    with pytest.raises(Exception):  # noqa: B017  (the codec's own error type)
        main(["convert", "cwb", str(path), str(dest)])
    assert not dest.exists()
    assert set(os.listdir(tmp_path)) == before  # no temporary store left either


def test_cli_reports_a_source_in_the_wrong_layout_without_a_traceback(hrrr_mini, capsys):
    path, *_ = hrrr_mini
    assert main(["convert", "cwb", str(path), str(path.parent / "x.zarr")]) == 2
    assert "hrrr_mini_train.nc" in capsys.readouterr().err


def test_failed_overwrite_keeps_the_previous_store(tmp_path):
    dest = tmp_path / "keep.zarr"
    good = xr.Dataset({"a": ("t", np.arange(3.0))})
    write_dataset(good, dest, kind="convert")

    bad = xr.Dataset({"a": ("t", np.array(["x", object()], dtype=object))})
    with pytest.raises(Exception):  # noqa: B017
        write_dataset(bad, dest, kind="convert", overwrite=True)
    np.testing.assert_array_equal(xr.open_zarr(dest)["a"].values, np.arange(3.0))
    assert sorted(os.listdir(tmp_path)) == ["keep.zarr"]
