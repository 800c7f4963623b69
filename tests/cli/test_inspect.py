"""``corrdiff-xr inspect``: the report on a pair of native archives, a single archive and a
canonical store, with the fix for each problem found."""

from __future__ import annotations

import warnings

import pytest

from corrdiff_xr.cli import main
from corrdiff_xr.data.sources.native_example import native_archives


@pytest.fixture(scope="module")
def odd_archives(tmp_path_factory):
    """37x49 km-scale grid (no UNet halves it) in the 360_day calendar."""
    root = tmp_path_factory.mktemp("odd")
    paths = {}
    for name, ds in native_archives(nt=12, ny=37, nx=49, calendar="360_day").items():
        paths[name] = str(root / f"{name}.zarr")
        ds.to_zarr(paths[name])
    return paths


def _inspect(argv, capsys) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert main(["inspect", *argv]) == 0
    return capsys.readouterr().out


def test_a_pair_of_native_archives_is_reported_with_fixes(odd_archives, capsys):
    params = [f"coarse_url={odd_archives['coarse']}", f"fine_url={odd_archives['fine']}",
              f"orography_url={odd_archives['orography']}"]  # fmt: skip
    out = _inspect(["catalog:archives/pair", "--param", *params], capsys)
    assert "targets (fine): ['tas', 'uas']" in out
    assert "grid mapping 'rotated_pole' (rotated_latitude_longitude)" in out
    assert "y_coarse: latitude [degrees_north] 53..48 (descending)" in out
    assert "calendar 360_day, every 3 hours" in out and "2001-02-27T00:00" in out
    assert "tas: 42.5 % NaN (first time): trained with the masked loss" in out
    assert "crop 37x49 -> 36x48 (a pair's window={'y': [0, 36], 'x': [0, 48]})" in out
    assert "37x49 is padded to 40x52 and cropped back" in out and "does not divide" not in out
    assert "regridded by bilinear (placed by" in out
    assert "squeezed singleton dim 'height'" in out and "cut (53, 65) -> fine grid" in out
    assert "overlap: the coarse grid covers 100.0 % of the fine domain" in out
    assert out.count("  lat ") == 2  # the lat/lon box of each grid


def test_a_single_archive_is_described_by_its_cf_axes(odd_archives, capsys):
    out = _inspect([odd_archives["fine"]], capsys)
    assert out.startswith("not a canonical pair: source")
    assert "tas ('time', 'height', 'rlat', 'rlon') float32: axes T=time, X=rlon, Y=rlat" in out
    assert "'height' has one value: squeezed" in out  # as open_archives does
    assert "time_bnds ('time', 'bnds'): bounds; a fine archive's 1-D bounds are kept" in out
    assert "no Y (latitude) axis" not in out
    assert "rotated_pole: grid mapping" in out and "open_archives(coarse, fine)" in out


def test_a_canonical_store_fits_every_preset(tmp_path, capsys):
    from corrdiff_xr.data import synthetic_dataset

    synthetic_dataset(ny=16, nx=16, nt=2, factor=4).to_zarr(tmp_path / "c.zarr")
    out = _inspect([str(tmp_path / "c.zarr"), "--scan"], capsys)
    assert "network preset 'normal' (5 levels): 16x16 fits" in out
    assert "t2m: complete (all times)" in out and out.rstrip().endswith("problems: none")


def _inspect_error(argv, capsys) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert main(["inspect", *argv]) == 2
    return capsys.readouterr().err


def test_the_scan_announces_its_size_and_refuses_past_its_budget(tmp_path, capsys):
    from corrdiff_xr.data import synthetic_dataset

    synthetic_dataset(ny=16, nx=16, nt=4, factor=4).to_zarr(tmp_path / "c.zarr")
    out = _inspect([str(tmp_path / "c.zarr"), "--scan"], capsys)
    assert "masks (all times: 16.4 kB read, budget 16.0 GB):" in out  # 4 targets x 4 kB
    err = _inspect_error([str(tmp_path / "c.zarr"), "--scan", "--scan-budget", "1e-5"], capsys)
    assert "would read 16.4 kB, more than the budget of 10.0 kB" in err
    assert "pass --scan-budget GB to raise it" in err


def test_absent_target_chunks_are_reported_as_a_problem(tmp_path, capsys):
    import os

    from corrdiff_xr.data import synthetic_dataset

    synthetic_dataset(ny=16, nx=16, nt=4, factor=4).to_zarr(tmp_path / "c.zarr")
    os.remove(tmp_path / "c.zarr" / "tp" / "c" / "3" / "0" / "0")
    out = _inspect([str(tmp_path / "c.zarr"), "--scan"], capsys)
    assert "tp: 25.0 % NaN (all times)" in out
    assert (
        "- tp: 1 of 4 chunks are absent from the store (the first at 2020-01-01T03:00) and read as nan"
        in out
    )


def test_a_store_declaring_a_30000_squared_grid_is_answered_at_once(tmp_path, capsys):
    import time

    import zarr

    group = zarr.open_group(tmp_path / "huge.zarr", mode="w")
    for name in ("lat", "lon"):
        group.create_array(name, shape=(30000, 30000), chunks=(1000, 1000), dtype="f8",
                           dimension_names=("y", "x"))  # fmt: skip
    group.create_array("t2m", shape=(1, 30000, 30000), chunks=(1, 1000, 1000), dtype="f4",
                       dimension_names=("time", "y", "x"), attributes={"coordinates": "lat lon"})  # fmt: skip
    start = time.perf_counter()
    err = _inspect_error([str(tmp_path / "huge.zarr")], capsys)
    assert time.perf_counter() - start < 10
    assert "coordinates declare 14.4 GB (largest 'lat', shape (30000, 30000))" in err


def test_the_pairs_window_is_a_catalog_parameter(odd_archives, capsys):
    params = [f"coarse_url={odd_archives['coarse']}", f"fine_url={odd_archives['fine']}",
              'window={"y": [0, 36], "x": [0, 48]}']  # fmt: skip
    out = _inspect(["catalog:archives/pair", "--param", *params], capsys)
    assert "36x48" in out and "crop 37x49" not in out


def test_time_steps_are_reported_in_natural_units():
    from corrdiff_xr.data.report import _duration

    assert _duration(360 * 86400) == "360 days" and _duration(86400) == "1 day"
    assert _duration(6 * 3600) == "6 hours" and _duration(600) == "10 minutes"
    assert _duration(90) == "90 seconds"


def test_a_store_whose_coarse_grid_misses_part_of_the_domain_reports_the_overlap(tmp_path, capsys):
    from corrdiff_xr.data import synthetic_dataset

    ds = synthetic_dataset(ny=16, nx=16, nt=2, factor=4)
    shift = float(ds["x_coarse"][2] - ds["x_coarse"][0])  # two coarse cells east
    ds.assign_coords(x_coarse=ds["x_coarse"] + shift, lon_coarse=ds["lon_coarse"] + shift).to_zarr(
        tmp_path / "c.zarr"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert main(["inspect", str(tmp_path / "c.zarr")]) == 1  # a problem, not a crash
    out = capsys.readouterr().out
    lat, lon = float(ds["lat"].min()), float(ds["lon"].min())
    assert f"fine grid: lat {lat:.3f}.." in out and f"lon {lon:.3f}.." in out
    assert "coarse grid: lat " in out
    share = float(out.split("covers ")[1].split(" %")[0])
    assert 0 < share < 100
    assert (
        "- the pair cannot be opened: " in out
        and "does not cover the fine domain at its west" in out
    )


def test_a_pair_whose_latitudes_do_not_match_its_crs_is_reported_as_a_problem(tmp_path, capsys):
    paths = {}
    for name, ds in native_archives(nt=4, ny=16, nx=16).items():
        if name == "fine":  # the rotated pole moved: lat/lon no longer on its grid
            ds["rotated_pole"].attrs["grid_north_pole_latitude"] = 20.0
        paths[name] = str(tmp_path / f"{name}.zarr")
        ds.to_zarr(paths[name])
    params = [f"coarse_url={paths['coarse']}", f"fine_url={paths['fine']}"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert main(["inspect", "catalog:archives/pair", "--param", *params]) == 1
    out = capsys.readouterr().out
    assert "problems:\n  - the pair cannot be opened: source 'catalog:archives/pair': fine" in out
    assert "does not describe its grid" in out
