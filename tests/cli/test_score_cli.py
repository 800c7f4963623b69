"""Tests for ``corrdiff-xr score`` on our Zarr layout and on the reference's NetCDF layout."""

from __future__ import annotations

import os

import netCDF4
import numpy as np
import pandas as pd
import properscoring
import pytest
import xarray as xr

from corrdiff_xr import cli, scoring
from corrdiff_xr._outputs import product_of
from corrdiff_xr.data.write import write_dataset
from corrdiff_xr.dims import LAT, LON, MEMBER, TIME, X, Y
from corrdiff_xr.scoring import inputs as score_inputs

NAMES = ("t2m", "tp")
UNITS = {"t2m": "K", "tp": "kg m-2"}


def make_pair(*, members=3, nt=2, ny=6, nx=8, seed=0, step="3h"):
    rng = np.random.default_rng(seed)
    coords = {
        TIME: np.array("2021-06-01T00", dtype="datetime64[ns]")
        + np.arange(nt) * np.timedelta64(pd.Timedelta(step)),
        Y: (Y, 50 + 0.02 * np.arange(ny), {"units": "degrees_north"}),
        X: (X, 0.03 * np.arange(nx), {"units": "degrees_east"}),
    }
    lat2, lon2 = np.meshgrid(coords[Y][1], coords[X][1], indexing="ij")
    coords[LAT] = ((Y, X), lat2)
    coords[LON] = ((Y, X), lon2)
    pred = xr.Dataset(
        {
            n: ((MEMBER, TIME, Y, X), rng.gamma(2.0, size=(members, nt, ny, nx)), {"units": u})
            for n, u in UNITS.items()
        },
        coords=coords,
    )
    truth = xr.Dataset(
        {
            n: ((TIME, Y, X), rng.gamma(2.0, size=(nt, ny, nx)), {"units": u})
            for n, u in UNITS.items()
        },
        coords=coords,
    )
    return pred, truth


def write_reference_netcdf(path, pred: xr.Dataset, truth: xr.Dataset) -> None:
    """The reference generate.py layout, written with netCDF4 the way its writer does."""
    with netCDF4.Dataset(path, "w") as f:
        f.createDimension("time")
        f.createDimension("ensemble")
        ny, nx = truth.sizes[Y], truth.sizes[X]
        f.createDimension("x", nx)
        f.createDimension("y", ny)
        v = f.createVariable("lat", "f", ("y", "x"))
        v[:] = truth[LAT].values
        v.units = "degrees_north"
        v = f.createVariable("lon", "f", ("y", "x"))
        v[:] = truth[LON].values
        v.units = "degrees_east"
        v = f.createVariable("time", "i8", ("time",))
        v.calendar = "standard"
        v.units = "hours since 1990-01-01 00:00:00"
        hours = (truth[TIME].values - np.datetime64("1990-01-01")) // np.timedelta64(1, "h")
        v[:] = hours
        groups = {g: f.createGroup(g) for g in ("truth", "prediction", "input")}
        for name in NAMES:
            groups["truth"].createVariable(name, "f", ("time", "y", "x"))[:] = truth[name].values
            groups["prediction"].createVariable(name, "f", ("ensemble", "time", "y", "x"))[:] = (
                pred[name].values
            )
            groups["input"].createVariable(name + "_coarse", "f", ("time", "y", "x"))[:] = truth[
                name
            ].values


def test_score_command_on_zarr_with_separate_truth_matches_the_library(tmp_path, capsys):
    pred, truth = make_pair()
    pred.to_zarr(tmp_path / "pred.zarr")
    truth.to_zarr(tmp_path / "truth.zarr")
    out = tmp_path / "scores.nc"
    argv = ["score", str(tmp_path / "pred.zarr"), "--truth", str(tmp_path / "truth.zarr")]
    assert cli.main([*argv, "-o", str(out), "--estimator", "fair"]) == 0
    got = xr.open_dataset(out)
    assert got["score"].dims == ("metric", "variable", TIME)
    assert got.attrs["crps_estimator"] == "fair"
    want = scoring.summary(pred, truth, estimator="fair").compute()
    np.testing.assert_allclose(got["score"].values, want["score"].values, rtol=1e-6)
    printed = capsys.readouterr().out
    assert "crps" in printed and "t2m [K]" in printed and "spread_skill" in printed


def test_score_command_finds_truth_in_the_prediction_store(tmp_path):
    pred, truth = make_pair()
    store = tmp_path / "ensemble.zarr"
    pred.to_zarr(store)
    truth.to_zarr(store, group="truth", mode="a")
    out = tmp_path / "scores.zarr"
    assert cli.main(["score", str(store), "-o", str(out), "--metrics", "crps,rmse"]) == 0
    got = xr.open_zarr(out)
    assert got["metric"].values.tolist() == ["crps", "rmse"]
    expected = scoring.crps(pred, truth, dim=[Y, X])["tp"]
    np.testing.assert_allclose(got["score"].sel(metric="crps", variable="tp"), expected)


def test_score_command_finds_truth_at_the_root_when_the_ensemble_is_in_a_group(tmp_path):
    pred, truth = make_pair()
    store = tmp_path / "canonical.zarr"
    truth.to_zarr(store)  # the canonical store: targets under their names at the root
    pred.to_zarr(store, group="ensemble", mode="a")
    out = tmp_path / "scores.nc"
    argv = ["score", str(store), "--prediction-group", "ensemble", "-o", str(out)]
    assert cli.main([*argv, "--metrics", "mae"]) == 0
    expected = scoring.mae(pred, truth, dim=[Y, X])["t2m"]
    got = xr.open_dataset(out)["score"].sel(metric="mae", variable="t2m")
    np.testing.assert_allclose(got, expected)


def test_score_command_reads_the_reference_netcdf_layout(tmp_path):
    pred, truth = make_pair(members=4, nt=3)
    path = tmp_path / "corrdiff_output.nc"
    write_reference_netcdf(path, pred, truth)
    groups = score_inputs.open_reference_netcdf(path)
    assert groups["prediction"]["t2m"].dims == (MEMBER, TIME, Y, X)
    np.testing.assert_array_equal(groups["truth"][TIME].values, truth[TIME].values)
    assert groups["input"]["t2m_coarse"].dims == (TIME, Y, X)

    out = tmp_path / "scores.nc"
    assert cli.main(["score", str(path), "-o", str(out), "--area-weighted"]) == 0
    got = xr.open_dataset(out)["score"]
    # float32 on disk: compare against properscoring on the same stored values
    obs = truth["t2m"].values.astype(np.float32)
    ens = np.moveaxis(pred["t2m"].values.astype(np.float32), 0, -1)
    w = np.cos(np.deg2rad(truth[LAT].values.astype(np.float32)))
    pointwise = properscoring.crps_ensemble(obs, ens)
    expected = (pointwise * w).sum(axis=(1, 2)) / w.sum()
    np.testing.assert_allclose(got.sel(metric="crps", variable="t2m"), expected, rtol=1e-5)
    assert got[TIME].values.tolist() == truth[TIME].values.tolist()


def test_rewriting_a_zarr_output_replaces_it_without_leftovers(tmp_path):
    pred, truth = make_pair()
    first = scoring.summary(pred, truth).compute()
    target = tmp_path / "scores.zarr"
    write_dataset(first, target, kind="score")
    second = first.isel(metric=[0])
    write_dataset(second, target, kind="score", overwrite=True)
    assert xr.open_zarr(target)["metric"].values.tolist() == ["crps"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.zarr"]


def test_missing_truth_is_a_clear_error(tmp_path, capsys):
    pred, _ = make_pair()
    pred.to_zarr(tmp_path / "pred.zarr")
    with pytest.raises(ValueError, match="no truth group 'truth'; pass --truth"):
        score_inputs.open_prediction(str(tmp_path / "pred.zarr"))
    with pytest.raises(FileNotFoundError, match="missing.nc"):
        score_inputs.open_prediction(str(tmp_path / "missing.nc"))
    assert cli.main(["score", str(tmp_path / "pred.zarr")]) == 2
    assert "no truth group 'truth'; pass --truth" in capsys.readouterr().err


def test_score_command_reads_fsspec_urls_and_writes_plots(tmp_path, capsys):
    pred, truth = make_pair(members=3)
    url = "memory://score-cli-test"
    pred.to_zarr(f"{url}/pred.zarr", mode="w")
    truth.to_zarr(f"{url}/truth.zarr", mode="w")
    plots = tmp_path / "plots"
    argv = ["score", f"{url}/pred.zarr", "--truth", f"{url}/truth.zarr", "--plots", str(plots)]
    assert cli.main([*argv, "--variables", "tp", "--metrics", "crps"]) == 0
    assert sorted(p.name for p in plots.iterdir()) == [
        ".corrdiff_xr_output",  # the marker: a later --overwrite may replace this folder
        "maps.png",
        "rank_histogram.png",
        "spectra.png",
    ]
    assert all(
        (plots / name).read_bytes()[:4] == b"\x89PNG" for name in ("maps.png", "spectra.png")
    )
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["metric", "tp", "[kg", "m-2]"]
    expected = float(scoring.crps(pred[["tp"]], truth)["tp"])
    assert float(table[1].split()[1]) == pytest.approx(expected, rel=1e-3)


def test_reader_round_trips_the_generate_commands_reference_netcdf(tmp_path):
    netcdf = pytest.importorskip("corrdiff_xr.inference.netcdf")
    pred, truth = make_pair(members=2, nt=2)
    inputs = truth.rename({n: f"{n}_coarse" for n in NAMES})
    path = netcdf.write_reference_netcdf(tmp_path / "gen.nc", pred, inputs=inputs, truth=truth)
    groups = score_inputs.open_reference_netcdf(path)
    for name in NAMES:
        np.testing.assert_allclose(groups["prediction"][name], pred[name].astype("f4"))
        np.testing.assert_allclose(groups["truth"][name], truth[name].astype("f4"))
    np.testing.assert_array_equal(groups["prediction"][TIME].values, pred[TIME].values)
    assert groups["input"]["tp_coarse"].attrs["units"] == UNITS["tp"]


@pytest.mark.parametrize(
    ("step", "units"),
    [("10min", "minutes"), ("30min", "minutes"), ("90s", "seconds"), ("3h", "hours")],
)
def test_the_reference_netcdf_keeps_every_time_at_its_resolution(tmp_path, step, units):
    from corrdiff_xr.inference.netcdf import REFERENCE_TIME_UNITS, write_reference_netcdf

    pred, truth = make_pair(members=2, nt=4, step=step)
    path = write_reference_netcdf(tmp_path / "gen.nc", pred, truth=truth)
    with netCDF4.Dataset(path) as f:  # the reference's hours whenever they hold every time
        assert f["time"].units == REFERENCE_TIME_UNITS.replace("hours", units)
        assert f["time"].dtype == np.int64
    groups = score_inputs.open_reference_netcdf(path)
    np.testing.assert_array_equal(groups["prediction"][TIME].values, pred[TIME].values)


def test_a_cftime_axis_keeps_its_sub_hourly_times_in_its_calendar(tmp_path):
    from corrdiff_xr.inference.netcdf import write_reference_netcdf

    times = xr.date_range(
        "2001-02-30", periods=4, freq="10min", calendar="360_day", use_cftime=True
    )
    pred, truth = make_pair(members=2, nt=4)
    pred, truth = (d.assign_coords({TIME: times.values}) for d in (pred, truth))
    path = write_reference_netcdf(tmp_path / "gen.nc", pred, truth=truth)
    got = score_inputs.open_reference_netcdf(path)["truth"][TIME].values
    assert list(got) == list(times.values) and got[0].calendar == "360_day"


def test_score_refuses_a_forecast_or_truth_whose_time_labels_repeat(tmp_path, capsys):
    pred, truth = make_pair(members=2, nt=4, step="10min")
    path = tmp_path / "floored.nc"
    write_reference_netcdf(path, pred, truth)  # whole hours, as the reference writes them
    assert cli.main(["score", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"prediction {path}" in err
    assert "['2021-06-01T00:00:00.000000000'] repeat (4 of 4 steps" in err
    # a separate truth with repeated labels is named as --truth
    pred.to_zarr(tmp_path / "pred.zarr")
    twice = truth.assign_coords({TIME: np.repeat(truth[TIME].values[:2], 2)})
    twice.to_zarr(tmp_path / "truth.zarr")
    assert (
        cli.main(["score", str(tmp_path / "pred.zarr"), "--truth", str(tmp_path / "truth.zarr")])
        == 2
    )
    err = capsys.readouterr().err
    assert f"--truth {tmp_path / 'truth.zarr'}" in err and "2 label(s)" in err


# -- outputs: only our own, only with --overwrite ---------------------------------------------
def _stores(tmp_path):
    pred, truth = make_pair()
    pred.to_zarr(tmp_path / "pred.zarr")
    truth.to_zarr(tmp_path / "truth.zarr")
    return ["score", str(tmp_path / "pred.zarr"), "--truth", str(tmp_path / "truth.zarr")]


def test_score_never_replaces_a_users_file_or_directory(tmp_path, capsys):
    argv = _stores(tmp_path)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    table = tmp_path / "table.nc"
    table.write_text("my own table")
    for option, target in (("-o", folder), ("-o", table), ("--plots", folder)):
        for extra in ([], ["--overwrite"]):
            assert cli.main([*argv, option, str(target), *extra]) == 2
            err = capsys.readouterr().err
            assert f"{target} exists and is a" in err and "did not write" in err
    assert os.listdir(folder) == ["notes.txt"]
    assert (folder / "notes.txt").read_text() == "precious"
    assert table.read_text() == "my own table"


@pytest.mark.parametrize("name", ["scores.nc", "scores.zarr"])
def test_a_score_output_is_marked_and_replaced_only_with_overwrite(tmp_path, capsys, name):
    argv = _stores(tmp_path)
    out = tmp_path / name
    assert cli.main([*argv, "-o", str(out), "--metrics", "crps"]) == 0
    assert product_of(out) == "score"
    assert cli.main([*argv, "-o", str(out), "--metrics", "mae"]) == 2  # re-scored
    assert f"{out} exists" in capsys.readouterr().err
    assert xr.open_dataset(out)["metric"].values.tolist() == ["crps"]
    assert cli.main([*argv, "-o", str(out), "--metrics", "mae", "--overwrite"]) == 0
    assert xr.open_dataset(out)["metric"].values.tolist() == ["mae"]
    assert product_of(out) == "score"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "pred.zarr", "truth.zarr"])


def test_score_never_replaces_another_products_output(tmp_path, capsys):
    argv = _stores(tmp_path)
    other = write_dataset(
        xr.Dataset({"a": ("t", np.arange(3.0))}), tmp_path / "c.zarr", kind="convert"
    )
    assert cli.main([*argv, "-o", str(other), "--overwrite"]) == 2
    assert "a corrdiff-xr 'convert' output; refusing" in capsys.readouterr().err
    np.testing.assert_array_equal(xr.open_zarr(other)["a"].values, np.arange(3.0))


def test_a_plots_folder_is_replaced_with_overwrite_unless_it_holds_a_users_file(tmp_path, capsys):
    argv = [*_stores(tmp_path), "--metrics", "crps"]
    plots = tmp_path / "plots"
    assert cli.main([*argv, "--plots", str(plots)]) == 0
    assert product_of(plots) == "score-plots"
    first = (plots / "maps.png").stat().st_mtime_ns
    assert cli.main([*argv, "--plots", str(plots)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert cli.main([*argv, "--plots", str(plots), "--overwrite"]) == 0
    assert (plots / "maps.png").stat().st_mtime_ns != first
    assert not [p for p in os.listdir(plots) if ".tmp-" in p or ".old-" in p]
    (plots / "notes.txt").write_text("mine")
    assert cli.main([*argv, "--plots", str(plots), "--overwrite"]) == 2
    assert "also holds notes.txt" in capsys.readouterr().err
    assert (plots / "notes.txt").read_text() == "mine"


# -- --truth as a data source: a catalog entry or a canonical store ---------------------------
@pytest.fixture
def catalog_truth(tmp_path):
    """(cache dir, the demo_tiny pair, a 3-member prediction for 2 of its 4 times on disk)."""
    from corrdiff_xr.data import open_source

    cache = tmp_path / "cache"
    pair = open_source("catalog:demo/demo_tiny", params={"cache_dir": str(cache)})
    truth = pair.fine.isel({TIME: [1, 2]}).compute()
    rng = np.random.default_rng(0)
    pred = xr.concat([truth + rng.normal(0, 0.5, truth["t2m"].shape) for _ in range(3)], MEMBER)
    for name in pred.data_vars:
        pred[name].attrs = truth[name].attrs
    pred.to_zarr(tmp_path / "pred.zarr")
    return cache, pair, pred


def test_score_truth_may_be_a_catalog_entry_or_a_canonical_store(tmp_path, catalog_truth, capsys):
    cache, pair, pred = catalog_truth
    (store,) = cache.iterdir()
    pair.fine.to_zarr(tmp_path / "fine.zarr")  # a plain truth store, as before
    want = scoring.summary(pred, pair.fine).compute()
    truths = {
        "catalog": ["catalog:demo/demo_tiny", "--truth-param", f"cache_dir={cache}"],
        "canonical store": [str(store)],
        "plain store": [str(tmp_path / "fine.zarr")],
    }
    for name, truth in truths.items():
        out = tmp_path / f"{name}.nc"
        assert (
            cli.main(["score", str(tmp_path / "pred.zarr"), "--truth", *truth, "-o", str(out)]) == 0
        )
        got = xr.open_dataset(out)
        assert got.attrs["truth"] == truth[0]
        np.testing.assert_allclose(
            got["score"].values, want["score"].values, rtol=1e-6, err_msg=name
        )


def test_a_canonical_truth_is_its_targets_opened_without_reading_data(tmp_path, catalog_truth):
    from corrdiff_xr.testing import raise_if_dask_computes

    cache, pair, _ = catalog_truth
    (store,) = cache.iterdir()
    with raise_if_dask_computes():
        from_catalog = score_inputs.open_truth(
            "catalog:demo/demo_tiny", params={"cache_dir": str(cache)}
        )
        from_store = score_inputs.open_truth(str(store))
        _, truth, _ = score_inputs.open_prediction(str(tmp_path / "pred.zarr"), truth=str(store))
    for got in (from_catalog, from_store, truth):
        assert sorted(got.data_vars) == sorted(pair.targets)  # not its inputs or static fields
        xr.testing.assert_identical(got, pair.fine)


def test_bad_truth_sources_are_one_line_naming_the_option(tmp_path, catalog_truth, capsys):
    cache, _, _ = catalog_truth
    pred = str(tmp_path / "pred.zarr")
    cases = [
        (
            ["--truth", "catalog:demo"],
            "--truth 'catalog:demo' is not of the form catalog:NAME/ENTRY",
        ),
        (
            [
                "--truth",
                "catalog:demo/demo_tiny",
                "--truth-param",
                f"cache_dir={cache}",
                "trust=true",
            ],
            "--truth-param.trust: --truth 'catalog:demo/demo_tiny': a catalog is trusted by its user",
        ),
        (
            ["--truth", pred, "--truth-param", "seed=1"],
            "--truth-param ['seed'] only apply to a catalog:NAME/ENTRY --truth",
        ),
        (["--truth", "catalog:demo/demo_tiny", "--truth-param", "seed"], "argument --truth-param"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        try:
            rc = cli.main(["score", pred, *extra])
        except SystemExit as exit_:  # argparse errors
            rc = exit_.code
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) >= 1 and message in err[-1], (extra, err)
        assert "Traceback" not in "\n".join(err)


def _score_table(path) -> xr.DataArray:
    return xr.open_dataset(path)["score"].load()


def test_score_command_takes_a_deterministic_forecast(tmp_path):
    pred, truth = make_pair()
    store = tmp_path / "mean.zarr"
    pred.mean(MEMBER).to_zarr(store)  # e.g. generate --output-kind mean: no member dim
    truth.to_zarr(store, group="truth", mode="a")
    out = tmp_path / "scores.nc"
    assert cli.main(["score", str(store), "-o", str(out)]) == 0
    table = _score_table(out)
    assert list(table.metric.values) == ["crps", "mae", "rmse"]
    np.testing.assert_allclose(table.sel(metric="crps"), table.sel(metric="mae"), rtol=1e-12)
    expected = abs(pred.mean(MEMBER).t2m - truth.t2m).mean([Y, X])
    np.testing.assert_allclose(table.sel(metric="mae", variable="t2m"), expected, rtol=1e-10)


def test_score_command_adds_the_bilinear_baseline_from_the_reference_netcdf(tmp_path, capsys):
    netcdf = pytest.importorskip("corrdiff_xr.inference.netcdf")
    pred, truth = make_pair(members=3, nt=2)
    rng = np.random.default_rng(7)
    inputs = (truth + rng.normal(size=truth.t2m.shape)).rename({n: f"{n}_coarse" for n in NAMES})
    path = netcdf.write_reference_netcdf(tmp_path / "gen.nc", pred, inputs=inputs, truth=truth)
    out = tmp_path / "scores.nc"
    argv = ["score", str(path), "--baseline", "bilinear", "-o", str(out), "--metrics", "crps,mae"]
    assert cli.main(argv) == 0
    table = _score_table(out)
    assert list(table.forecast.values) == ["prediction", "bilinear"]
    f4 = lambda a: a.astype("f4").astype("f8")  # the NetCDF layout stores float32
    bilinear = abs(f4(inputs.t2m_coarse) - f4(truth.t2m)).mean([Y, X])
    got = table.sel(forecast="bilinear", metric="mae", variable="t2m")
    np.testing.assert_allclose(got, bilinear, rtol=1e-5)
    np.testing.assert_allclose(
        table.sel(forecast="bilinear", metric="crps"), table.sel(forecast="bilinear", metric="mae")
    )
    printed = capsys.readouterr().out
    assert "prediction\nmetric" in printed and "bilinear\nmetric" in printed


def test_the_bilinear_baseline_needs_the_coarse_inputs(tmp_path, capsys):
    pred, truth = make_pair()
    store = tmp_path / "ens.zarr"
    pred.to_zarr(store)
    truth.to_zarr(store, group="truth", mode="a")
    assert cli.main(["score", str(store), "--baseline", "bilinear"]) == 2
    assert "needs the coarse inputs" in capsys.readouterr().err


def test_the_bilinear_baseline_from_a_canonical_truth_matches_the_library(tmp_path):
    from corrdiff_xr.data import open_pair, synthetic_dataset

    synthetic_dataset(ny=16, nx=16, nt=4, factor=4).to_zarr(tmp_path / "canon.zarr")
    pair = open_pair(str(tmp_path / "canon.zarr"))
    names = ["t2m", "u10"]
    pred = (pair.fine[names] * 1.001).expand_dims(member=2).compute()
    pred.to_zarr(tmp_path / "ens.zarr")
    out = tmp_path / "s.nc"
    argv = ["score", str(tmp_path / "ens.zarr"), "--truth", str(tmp_path / "canon.zarr")]
    assert cli.main([*argv, "--baseline", "bilinear", "--metrics", "mae", "-o", str(out)]) == 0
    got = _score_table(out).sel(forecast="bilinear", metric="mae")
    want = scoring.mae(scoring.bilinear_baseline(pair, tuple(names)), pair.fine, dim=[Y, X])
    for name in names:
        np.testing.assert_allclose(got.sel(variable=name), want[name], rtol=1e-6)
