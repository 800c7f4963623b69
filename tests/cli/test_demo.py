"""The ``demo`` command: outputs, scores.json and the CorrDiff ordering on the shipped student.

The end-to-end run (one per module, small settings: 4 members, 2 held-out hours, the shipped
student's own sampler: one network call per member) takes some tens of seconds on two CPU
cores, most of it building the demo store once.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil

import numpy as np
import pytest
import xarray as xr

from corrdiff_xr import cli, demo
from corrdiff_xr._outputs import MARKER_FILE, product_of
from corrdiff_xr.dims import MEMBER, TIME, X, Y
from corrdiff_xr.model import read_checkpoint_header, shipped_model_path, shipped_student_path

TARGETS = ("t2m", "tp", "u10", "v10")


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory):
    # one cache per test session, shared with test_shipped_model
    return tmp_path_factory.getbasetemp() / "corrdiff_demo_cache"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, demo_cache):
    out = tmp_path_factory.mktemp("demo_out")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = cli.main(
            [
                "demo",
                "--out",
                str(out),
                "--members",
                "4",
                "--times",
                "2",
                "--cache-dir",
                str(demo_cache),
                "--quiet",
            ]
        )
    return rc, out, stdout.getvalue()


def test_demo_writes_zarr_outputs_plots_and_scores(demo_run):
    rc, out, _ = demo_run
    assert rc == 0
    for name in (
        "ensemble.zarr",
        "regression_mean.zarr",
        "scores.json",
        "maps.png",
        "spectra.png",
        "rank_histogram.png",
    ):
        assert (out / name).exists(), name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 10_000  # a drawn figure, not an empty canvas


def test_scores_json_holds_each_score_per_variable_and_overall(demo_run):
    scores = json.loads((demo_run[1] / "scores.json").read_text())
    assert set(scores) == set(demo.SCORE_KEYS)
    for key in demo.SCORE_KEYS:
        assert set(scores[key]) == {*TARGETS, "overall"}
        assert all(np.isfinite(v) and v >= 0 for v in scores[key].values())


def test_demo_ensemble_crps_beats_regression_mae_which_beats_bilinear(demo_run):
    scores = json.loads((demo_run[1] / "scores.json").read_text())
    assert scores["crps"]["overall"] < scores["mae_regression"]["overall"]
    assert scores["mae_regression"]["overall"] < scores["mae_bilinear"]["overall"]
    # per variable for the smooth fields; for intermittent tp, 4 members and 2 hours are too
    # few (the empirical-ensemble CRPS is biased high by O(spread / members))
    for var in ("t2m", "u10", "v10"):
        assert scores["crps"][var] < scores["mae_regression"][var] < scores["mae_bilinear"][var]


def test_demo_ensemble_zarr_has_members_on_the_fine_grid_with_cf_attributes(demo_run):
    ens = xr.open_zarr(demo_run[1] / "ensemble.zarr")
    mean = xr.open_zarr(demo_run[1] / "regression_mean.zarr")
    assert set(ens.data_vars) == set(TARGETS)
    assert dict(ens.sizes) == {MEMBER: 4, TIME: 2, Y: 64, X: 64}
    assert dict(mean.sizes) == {TIME: 2, Y: 64, X: 64}
    assert ens[TIME].values[0] == np.datetime64(demo.HELD_OUT_START, "ns")
    assert ens["t2m"].attrs["units"] == "K"
    # members differ from each other (the residual is stochastic) but not wildly
    t2m = ens["t2m"].values
    assert np.abs(t2m[0] - t2m[1]).mean() > 1e-3
    assert np.isfinite(t2m).all()


def test_demo_prints_a_score_table_with_every_variable(demo_run):
    text = demo_run[2]
    assert "mae_bilinear" in text
    for var in (*TARGETS, "overall"):
        assert any(line.startswith(var) for line in text.splitlines()), var


def test_demo_samples_the_shipped_student_with_its_calibrated_defaults(demo_run):
    header = read_checkpoint_header(shipped_student_path())["sampler"]
    assert header["solver"] == "distilled" and header["num_steps"] == 1
    line = next(x for x in demo_run[2].splitlines() if x.startswith("downscaling"))
    assert "with tiny_demo_student.safetensors (distilled, 1 step from sigma 800" in line
    assert "model defaults" in line and "overridden" not in line


def test_the_shipped_student_is_the_shipped_teacher_with_only_its_residual_replaced():
    from safetensors import safe_open

    with (
        safe_open(str(shipped_model_path()), "pt") as teacher,
        safe_open(str(shipped_student_path()), "pt") as student,
    ):
        assert set(teacher.keys()) == set(student.keys())
        changed = set()
        for key in teacher.keys():
            a, b = teacher.get_tensor(key), student.get_tensor(key)
            assert b.dtype == a.dtype  # fp16 storage, as the teacher is shipped
            if not (a == b).all():
                changed.add(key.split(".")[0])
    assert changed == {"residual"}


def test_demo_sampler_is_the_models_own_else_the_demo_default_with_overrides():
    own = read_checkpoint_header(shipped_student_path())["sampler"]
    settings, origin = demo.demo_sampler(shipped_student_path())
    assert origin == "model defaults"
    assert {k: settings[k] for k in own} == own
    settings, origin = demo.demo_sampler(shipped_student_path(), steps=2)
    assert (settings["num_steps"], settings["S_noise"], origin) == (
        2,
        own["S_noise"],
        "model defaults, overridden",
    )
    settings, origin = demo.demo_sampler(shipped_model_path())
    assert origin == "demo defaults"
    assert {k: settings[k] for k in demo.DEMO_SAMPLER} == demo.DEMO_SAMPLER
    same = demo.demo_sampler(shipped_model_path(), solver="dpmpp_2m", steps=7, sigma_max=200.0)
    assert same[1] == "demo defaults"  # values equal to the defaults override nothing
    settings, _ = demo.demo_sampler(shipped_model_path(), solver="heun", sigma_max=80.0)
    assert (settings["solver"], settings["num_steps"], settings["sigma_max"]) == ("heun", 7, 80.0)


def test_a_teachers_solver_on_the_student_is_refused_in_one_line(
    demo_run, demo_cache, tmp_path, capsys
):
    rc = _cheap_demo(tmp_path / "out", demo_cache, "--solver", "dpmpp_2m", "--no-plots")
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sampler.solver" in err[0] and "distilled" in err[0], err
    assert not (tmp_path / "out" / "scores.json").exists()


def test_demo_refuses_a_missing_model_with_a_clear_message(tmp_path, capsys):
    rc = cli.main(["demo", "--out", str(tmp_path), "--model", str(tmp_path / "nope.safetensors")])
    assert rc == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--model" in err[0] and "nope.safetensors does not exist" in err[0]


# -- scoring helpers on small data (no model) -----------------------------------------------
def test_a_point_ensemble_has_crps_equal_to_its_mae(tiny_synthetic):
    truth = tiny_synthetic[list(TARGETS)].compute()
    shifted = truth + 0.5
    ensemble = xr.concat([shifted, shifted], dim=MEMBER)
    scores = demo.compute_scores(ensemble, shifted, truth, truth, std=dict.fromkeys(TARGETS, 2.0))
    for var in TARGETS:
        assert scores["crps"][var] == pytest.approx(0.5, rel=1e-5)
        assert scores["mae_regression"][var] == pytest.approx(0.5, rel=1e-5)
        assert scores["mae_bilinear"][var] == 0.0
        assert scores["spread_skill"][var] == 0.0
    assert scores["crps"]["overall"] == pytest.approx(0.25, rel=1e-5)


def test_bilinear_baseline_is_the_regridded_coarse_input_named_as_the_target(tiny_synthetic):
    pair = tiny_synthetic.corrdiff.pair()
    base = demo.bilinear_baseline(pair)
    assert set(base.data_vars) == set(pair.targets)
    np.testing.assert_array_equal(base["t2m"].values, pair.inputs_on_fine["t2m_coarse"].values)
    with pytest.raises(KeyError, match="orography"):
        demo.bilinear_baseline(pair, ("orography",))


def test_score_table_has_a_row_per_variable_and_a_column_per_score():
    scores = {k: {"t2m": 1.0, "overall": 0.5} for k in demo.SCORE_KEYS}
    lines = demo.format_table(scores).splitlines()
    assert lines[0].split() == ["variable", *demo.SCORE_KEYS]
    assert [line.split()[0] for line in lines[2:]] == ["t2m", "overall"]


# -- the output directory: only the demo's own, replaced only with --overwrite -----------------
def _cheap_demo(out, cache, *extra):
    return cli.main(
        [
            "demo",
            "--out",
            str(out),
            "--members",
            "2",
            "--times",
            "1",
            "--steps",
            "2",
            "--cache-dir",
            str(cache),
            "--quiet",
            *extra,
        ]
    )


def test_demo_never_writes_into_a_users_directory(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    for extra in ([], ["--overwrite"]):
        assert cli.main(["demo", "--out", str(mine), *extra]) == 2
        err = capsys.readouterr().err
        assert f"--out {mine} exists and is a directory corrdiff-xr did not write" in err
    assert os.listdir(mine) == ["notes.txt"]
    assert (mine / "notes.txt").read_text() == "precious"


def test_demo_output_is_marked_and_rerunning_into_it_needs_overwrite(
    demo_run, demo_cache, tmp_path, capsys
):
    out = tmp_path / "again"
    shutil.copytree(demo_run[1], out)
    assert product_of(out) == "demo"
    assert product_of(out / "ensemble.zarr") == product_of(out / "regression_mean.zarr") == "demo"
    before = (out / "scores.json").read_text()
    assert _cheap_demo(out, demo_cache, "--no-plots") == 2
    assert "pass --overwrite to replace it" in capsys.readouterr().err
    assert (out / "scores.json").read_text() == before
    assert _cheap_demo(out, demo_cache, "--no-plots", "--overwrite") == 0
    assert dict(xr.open_zarr(out / "ensemble.zarr").sizes) == {MEMBER: 2, TIME: 1, Y: 64, X: 64}
    # the figures of the earlier run do not outlive it; nothing hidden is left behind
    assert sorted(p.name for p in out.iterdir()) == [
        MARKER_FILE,
        "ensemble.zarr",
        "regression_mean.zarr",
        "scores.json",
    ]
    assert product_of(out) == product_of(out / "ensemble.zarr") == "demo"
    (out / "notes.txt").write_text("mine")
    assert _cheap_demo(out, demo_cache, "--overwrite") == 2
    assert "also holds notes.txt, which it did not write" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine" and (out / "scores.json").exists()


@pytest.mark.parametrize("disk", ["read-only", "full"])
def test_a_read_only_or_full_disk_ends_the_demo_in_one_line(demo_run, demo_cache, tmp_path, disk):
    from test_cli import _in_private_tmpfs, _one_error_line, _private_tmpfs

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if not _private_tmpfs(mnt):
        pytest.skip("cannot mount a tmpfs in a private mount namespace (needs root, unshare)")
    out = mnt / "demo"
    setup, reason = {
        "read-only": (f"mount -t tmpfs -o ro tmpfs {mnt}", "Read-only file system"),
        # one free page: the marker fits, the first store does not
        "full": (
            f"mount -t tmpfs -o size=64k tmpfs {mnt} && head -c 61440 /dev/zero > {mnt}/f",
            "No space left on device",
        ),
    }[disk]
    argv = [
        "demo",
        "--out",
        str(out),
        "--members",
        "1",
        "--times",
        "1",
        "--steps",
        "1",
        "--no-plots",
        "--quiet",
        "--cache-dir",
        str(demo_cache),
    ]
    rc, stderr, listing = _in_private_tmpfs(mnt, setup, argv)
    assert rc == 1, stderr
    line = _one_error_line(stderr)
    assert f"could not write demo output {out}: {reason}" in line
    assert listing == ([] if disk == "read-only" else ["f"])  # no partial output directory
