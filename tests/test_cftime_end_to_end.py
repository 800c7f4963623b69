"""Climate-model calendars end to end: a canonical dataset on a cftime axis (noleap, 360_day)
is trained on, downscaled lazily, generated to Zarr and the reference NetCDF layout, and
scored, and every output keeps the calendar and the times."""

from __future__ import annotations

import math

import netCDF4
import numpy as np
import pytest
import xarray as xr
from _train_helpers import tiny_config

from corrdiff_xr import scoring
from corrdiff_xr.cli import main
from corrdiff_xr.codec import Codec
from corrdiff_xr.config import ConfigError, TrainRunConfig, from_dict
from corrdiff_xr.data import open_pair, synthetic_dataset
from corrdiff_xr.data.times import calendar_of, to_ns
from corrdiff_xr.dims import MEMBER, TIME
from corrdiff_xr.model import CorrDiff
from corrdiff_xr.testing import tiny_corrdiff
from corrdiff_xr.training import train
from corrdiff_xr.training.data import open_training_data

N = 16
CALENDARS = ("noleap", "360_day")
#: per calendar, generate's time options and the positions they pick: the 360_day axis
#: runs 2001-02-27 .. 2001-02-30 (days a standard calendar lacks), the noleap one into March
SELECTIONS = {
    "noleap": (["--time-range", "2001-02-28T12", "2001-03-01T00", "12h"], [3, 4]),
    "360_day": (["--times", "2001-02-29T12", "2001-02-30T00"], [5, 6]),
}


def cftime_dataset(calendar: str, *, nt: int = 8) -> xr.Dataset:
    """The synthetic dataset on a 12-hourly cftime axis from 2001-02-27 in ``calendar``."""
    ds = synthetic_dataset(ny=N, nx=N, nt=nt, factor=4, seed=2, chunks={TIME: 2})
    times = xr.date_range("2001-02-27", periods=nt, freq="12h", calendar=calendar, use_cftime=True)
    return ds.assign_coords({TIME: (TIME, times, ds[TIME].attrs)})


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """(root, {calendar: dataset}) with each dataset in root/<calendar>.zarr, and a tiny
    untrained model (its statistics from the noleap data) in root/model.safetensors."""
    root = tmp_path_factory.mktemp("cftime")
    data = {}
    for calendar in CALENDARS:
        data[calendar] = cftime_dataset(calendar)
        data[calendar].to_zarr(root / f"{calendar}.zarr", consolidated=False)
    codec = Codec.from_pair(open_pair(str(root / "noleap.zarr")))
    tiny_corrdiff(codec, (N, N)).save(root / "model.safetensors")
    return root, data


def _downscale(ds, model, **options):
    return ds.corrdiff.downscale(model, steps=2, patch=8, overlap=2, **options).compute()


@pytest.mark.parametrize("calendar", CALENDARS)
def test_members_of_a_cftime_axis_depend_only_on_seed_time_and_member(stores, calendar):
    root, data = stores
    ds, model = data[calendar], root / "model.safetensors"
    full = _downscale(ds, model, members=2, seed=3)
    assert calendar_of(full[TIME].values) == calendar
    assert list(full[TIME].values) == list(ds[TIME].values)
    # another selection, time chunking and ensemble size: the same members at the same times
    picked = [2, 6, 7]  # 360_day: 2001-02-30 among them
    part = _downscale(
        ds.isel({TIME: picked}), model, members=3, seed=3, chunks={TIME: 2, MEMBER: 2}
    )
    assert list(part[TIME].values) == list(ds[TIME].values[picked])
    for name in full.data_vars:
        np.testing.assert_array_equal(
            part[name].isel({MEMBER: [0, 1]}).values, full[name].isel({TIME: picked}).values
        )
    other = _downscale(ds.isel({TIME: picked}), model, members=2, seed=4)
    assert not np.array_equal(other["t2m"].values, part["t2m"].isel({MEMBER: [0, 1]}).values)


def test_a_cftime_time_draws_the_noise_of_its_nanoseconds_in_its_own_calendar(stores):
    """The noise key of a time is ``to_ns`` of it: a datetime64 axis holding those very
    nanoseconds (other dates of the standard calendar) gives the same members bit for bit,
    and the datetime64 path is the one it always was."""
    root, data = stores
    noleap = data["noleap"].isel({TIME: [1, 4]})
    standard = noleap.assign_coords({TIME: to_ns(noleap[TIME].values).astype("datetime64[ns]")})
    assert calendar_of(standard[TIME].values) == "standard"
    a = _downscale(noleap, root / "model.safetensors", members=2, seed=5)
    b = _downscale(standard, root / "model.safetensors", members=2, seed=5)
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values)


@pytest.mark.parametrize("calendar", CALENDARS)
def test_generate_and_score_keep_the_calendar_through_zarr_and_the_reference_netcdf(
    stores, tmp_path, calendar, capsys
):
    root, data = stores
    ds = data[calendar]
    options, positions = SELECTIONS[calendar]
    out, nc = tmp_path / "out.zarr", tmp_path / "out.nc"
    argv = [
        "generate",
        "--data",
        str(root / f"{calendar}.zarr"),
        "--checkpoint",
        str(root / "model.safetensors"),
        "--steps",
        "2",
        "--patch",
        "8",
        "--overlap",
        "2",
        "--members",
        "2",
        "--torch-threads",
        "1",
        "--zarr",
        str(out),
        "--netcdf",
        str(nc),
        *options,
    ]
    assert main(argv) == 0
    want = list(ds[TIME].values[positions])
    zarr_ds = xr.open_zarr(out, consolidated=True)
    assert calendar_of(zarr_ds[TIME].values) == calendar
    assert list(zarr_ds[TIME].values) == want
    assert zarr_ds[TIME].encoding["calendar"] == calendar
    with netCDF4.Dataset(nc) as f:
        assert f["time"].calendar == calendar
        assert f["time"].units == "hours since 1990-01-01 00:00:00"
        hours = netCDF4.num2date(f["time"][:], f["time"].units, f["time"].calendar)
        assert [h.isoformat() for h in hours] == [t.isoformat() for t in want]
        np.testing.assert_array_equal(f["prediction"]["t2m"][:], zarr_ds["t2m"].values)
        truth = ds["t2m"].isel({TIME: positions}).values
        np.testing.assert_array_equal(f["truth"]["t2m"][:], truth)
    assert list(xr.open_dataset(nc)[TIME].values) == want
    # the same command again finds its request (times of the calendar included) complete
    capsys.readouterr()
    assert main(argv) == 0
    assert "0 block(s) written" in capsys.readouterr().err

    # scored from the reference NetCDF (its own truth group) and from the Zarr store against
    # the canonical store, with the bilinear baseline
    assert main(["score", str(nc), "-o", str(tmp_path / "scores.nc")]) == 0
    scores = xr.open_dataset(tmp_path / "scores.nc")
    assert list(scores[TIME].values) == want
    assert np.isfinite(scores["score"].sel(metric="crps")).all()
    argv = ["score", str(out), "--truth", str(root / f"{calendar}.zarr"), "--baseline", "bilinear"]
    assert main([*argv, "-o", str(tmp_path / "both.zarr")]) == 0
    both = xr.open_zarr(tmp_path / "both.zarr")
    assert list(both[TIME].values) == want
    assert np.isfinite(both["score"].sel(metric="crps").values).all()


def test_scoring_accessors_on_a_cftime_axis_equal_those_on_positions(stores):
    root, data = stores
    ds = data["360_day"].isel({TIME: [5, 6, 7]})
    pred = _downscale(ds, root / "model.safetensors", members=3, seed=1)
    truth = ds[list(pred.data_vars)].compute()
    plain = {TIME: np.arange(3)}
    for metric in ("crps", "rmse", "spread_skill", "rank_histogram"):
        got = getattr(pred.corrdiff, metric)(truth, dim=["y", "x"])
        assert list(got[TIME].values) == list(ds[TIME].values), metric
        want = getattr(scoring, metric)(
            pred.assign_coords(plain), truth.assign_coords(plain), dim=["y", "x"]
        )
        for name in got.data_vars:
            np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=metric)
    summary = scoring.summary(pred, truth).compute()
    assert list(summary[TIME].values) == list(ds[TIME].values)
    assert np.isfinite(summary["score"].values).all()


def _error(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exit_:
        rc = exit_.code
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1, lines
    return rc, lines[0]


def test_command_line_times_are_read_in_the_datas_calendar(stores, tmp_path, capsys):
    root, _ = stores
    base = ["generate", "--checkpoint", str(root / "model.safetensors"), "--zarr"]
    noleap = [*base, str(tmp_path / "a.zarr"), "--data", str(root / "noleap.zarr")]
    rc, line = _error([*noleap, "--times", "2001-02-30"], capsys)
    assert rc == 2 and "'2001-02-30' is not a time of the noleap calendar" in line
    assert "covers 2001-02-27 00:00:00 .. 2001-03-02 12:00:00" in line
    # a range is checked as parsed, field by field: the same order in every calendar
    rc, line = _error([*noleap, "--time-range", "2001-02-30", "2001-02-29T12"], capsys)
    assert rc == 2 and "argument --time-range" in line and "before START" in line
    rc, line = _error([*noleap, "--times", "2001-02-31"], capsys)
    assert rc == 2 and "argument --times" in line and "not an ISO 8601 time" in line
    assert not (tmp_path / "a.zarr").exists()


def test_train_regression_then_diffusion_on_a_360_day_axis(tmp_path):
    ds = cftime_dataset("360_day")
    store = str(tmp_path / "data.zarr")
    ds.to_zarr(store, consolidated=False)
    # inclusive periods of whole days: February 29 in training, February 30 for validation
    periods = {"train_period": ["2001-02-27", "2001-02-29"], "valid_period": ["2001-02-30"] * 2}
    reg_cfg = tiny_config(store, tmp_path / "reg", duration=8)
    reg_cfg["data"].update(periods)
    reg = train(from_dict(TrainRunConfig, reg_cfg))
    assert reg.completed and math.isfinite(reg.loss)
    regression = reg.output_dir / "model.safetensors"
    diff_cfg = tiny_config(
        store, tmp_path / "diff", task="diffusion", regression_checkpoint=str(regression)
    )
    diff_cfg["data"].update(periods)
    diff = train(from_dict(TrainRunConfig, diff_cfg))
    assert diff.completed and math.isfinite(diff.loss)
    model = CorrDiff.load(diff.output_dir / "model.safetensors")
    # the statistics are those of the training period: the first six steps, no more
    mean, _ = model.codec.stats["t2m"]
    assert mean == pytest.approx(float(ds["t2m"].isel({TIME: slice(0, 6)}).mean()), rel=1e-6)
    out = _downscale(ds.isel({TIME: [6, 7]}), model, members=2, seed=0)
    assert [t.day for t in out[TIME].values] == [30, 30]
    assert all(np.isfinite(out[n].values).all() for n in out.data_vars)


def test_a_training_period_outside_the_calendar_names_the_setting(tmp_path):
    store = str(tmp_path / "data.zarr")
    cftime_dataset("noleap").to_zarr(store, consolidated=False)
    cfg = tiny_config(store, tmp_path / "run")
    cfg["data"]["train_period"] = ["2001-02-27", "2001-02-29"]
    with pytest.raises(ConfigError, match=r"data.train_period .* noleap-calendar time axis"):
        open_training_data(from_dict(TrainRunConfig, cfg))
