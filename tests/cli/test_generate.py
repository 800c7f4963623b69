"""``corrdiff-xr generate``: Zarr + reference NetCDF layout, resuming, options, what it may replace."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import netCDF4
import numpy as np
import pytest
import xarray as xr

from corrdiff_xr._outputs import PRODUCT_ATTR
from corrdiff_xr.cli import main
from corrdiff_xr.codec import Codec
from corrdiff_xr.data import open_pair, synthetic_dataset
from corrdiff_xr.inference.store import IDENTITY_ATTR, progress
from corrdiff_xr.testing import tiny_corrdiff


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    synthetic_dataset(ny=16, nx=16, nt=6, factor=4, seed=2).to_zarr(
        root / "data.zarr", consolidated=False
    )
    pair = open_pair(str(root / "data.zarr"))
    codec = Codec.from_pair(pair)
    # the model's channel order differs from the store's variable order, as it can in practice
    codec = Codec(
        codec.inputs, tuple(reversed(codec.targets)), codec.static, codec.stats, codec.attrs
    )
    tiny_corrdiff(codec, (16, 16)).save(root / "model.safetensors")
    return root, pair


def _args(root, out, *extra):
    return [
        "generate",
        "--data",
        str(root / "data.zarr"),
        "--checkpoint",
        str(root / "model.safetensors"),
        "--steps",
        "2",
        "--patch",
        "8",
        "--overlap",
        "2",
        "--zarr",
        str(out),
        "--torch-threads",
        "1",
        *extra,
    ]


def _run(argv, capsys) -> tuple[int, list[str]]:
    """Exit status of ``corrdiff-xr ARGV`` and its stderr lines (argparse exits via SystemExit)."""
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exit_:
        rc = exit_.code
    return rc, capsys.readouterr().err.splitlines()


def _error_line(lines: list[str]) -> str:
    """The one error line of a failed command; never a traceback."""
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and not any("Traceback" in line for line in lines), lines
    return errors[0]


def _same_store(a, b) -> None:
    x, y = xr.open_zarr(a, consolidated=False), xr.open_zarr(b, consolidated=False)
    assert x.attrs == y.attrs
    assert set(x.variables) == set(y.variables)
    for name in x.variables:
        np.testing.assert_array_equal(x[name].values, y[name].values, err_msg=name)


def test_generate_writes_zarr_and_the_reference_netcdf_layout(inputs, tmp_path):
    root, pair = inputs
    out, nc = tmp_path / "out.zarr", tmp_path / "out.nc"
    rc = main(
        _args(
            root,
            out,
            "--members",
            "2",
            "--seed",
            "4",
            "--netcdf",
            str(nc),
            "--times",
            "2020-01-01T01:00",
            "2020-01-01T04:00",
        )
    )
    assert rc == 0
    zarr_ds = xr.open_zarr(out, consolidated=True)  # complete stores are consolidated
    assert zarr_ds.t2m.dims == ("member", "time", "y", "x") and zarr_ds.sizes["member"] == 2
    assert not zarr_ds.t2m.isnull().any()
    with netCDF4.Dataset(nc) as f:
        assert set(f.groups) == {"input", "truth", "prediction"}
        assert f["lat"].dimensions == ("y", "x") and f["lon"].dimensions == ("y", "x")
        assert f["time"].units == "hours since 1990-01-01 00:00:00"
        hours = netCDF4.num2date(f["time"][:], f["time"].units, f["time"].calendar)
        assert [h.isoformat() for h in hours] == ["2020-01-01T01:00:00", "2020-01-01T04:00:00"]
        assert list(f["truth"].variables) == list(f["prediction"].variables)  # same order
        pred = f["prediction"]["t2m"]
        assert pred.dimensions == ("ensemble", "time", "y", "x") and pred.shape == (2, 2, 16, 16)
        np.testing.assert_array_equal(pred[:], zarr_ds.t2m.values)
        truth = pair.fine.t2m.sel(time=zarr_ds.time).values
        np.testing.assert_array_equal(f["truth"]["t2m"][:], truth)
        assert set(f["input"].variables) == set(pair.inputs)
        np.testing.assert_allclose(f["lat"][:], pair.dataset.lat.values.astype(np.float32))
        # both outputs carry the product marker and the same identity record
        assert f.getncattr(PRODUCT_ATTR) == "generate"
        assert json.loads(f.getncattr(IDENTITY_ATTR)) == zarr_ds.attrs[IDENTITY_ATTR]
    assert not list(tmp_path.glob(".out.nc.*"))  # the temporary file was renamed away
    assert zarr_ds.attrs[PRODUCT_ATTR] == "generate"


def test_the_identity_record_holds_the_whole_request_readably(inputs, tmp_path):
    root, _ = inputs
    out = tmp_path / "out.zarr"
    assert (
        main(
            _args(
                root,
                out,
                "--members",
                "2",
                "--seed",
                "3",
                "--boundary",
                "1",
                "--batch-size",
                "4",
                "--sampler",
                "S_churn=0.5",
                "--chunks",
                "y=8",
                "x=8",
                "--device",
                "cpu",
                "--times",
                "2020-01-01T02:00",
                "2020-01-01T03:00",
            )
        )
        == 0
    )
    record = json.loads((out / "zarr.json").read_text())["attributes"][IDENTITY_ATTR]  # plain JSON
    request = record["request"]
    weights = (root / "model.safetensors").read_bytes()
    assert request["checkpoint"] == {
        "name": "model.safetensors",
        "bytes": len(weights),
        "blake2b": hashlib.blake2b(weights, digest_size=16).hexdigest(),
    }
    assert request["data"] == {"data": str(root / "data.zarr")}
    assert request["times"]["count"] == 2 and request["times"]["first"].startswith(
        "2020-01-01T02:00"
    )
    sampling = request["sampling"]
    assert sampling["sampler"]["S_churn"] == 0.5 and sampling["sampler"]["num_steps"] == 2
    assert sampling["sampler"]["S_max"] == "inf"  # strict JSON
    assert {
        k: sampling[k]
        for k in (
            "output",
            "members",
            "seed",
            "patch",
            "overlap",
            "boundary",
            "weights",
            "batch_size",
            "device",
            "chunks",
        )
    } == {
        "output": "ensemble",
        "members": 2,
        "seed": 3,
        "patch": [8, 8],
        "overlap": 2,
        "boundary": 1,
        "weights": "ramp",
        "batch_size": 4,
        "device": "cpu",
        "chunks": {"member": 2, "time": 1, "y": 8, "x": 8},  # one member group per block
    }
    assert record["store"]["sizes"] == {"member": 2, "time": 2, "y": 16, "x": 16}


def test_the_request_records_the_patch_defaults_resolved(inputs, tmp_path, capsys):
    root, _ = inputs
    base = [
        "generate",
        "--data",
        str(root / "data.zarr"),
        "--checkpoint",
        str(root / "model.safetensors"),
        "--steps",
        "1",
        "--times",
        "2020-01-01T00:00",
        "--torch-threads",
        "1",
    ]
    patched, whole = tmp_path / "patched.zarr", tmp_path / "whole.zarr"
    assert main([*base, "--patch", "12", "16", "--zarr", str(patched)]) == 0
    assert main([*base, "--zarr", str(whole)]) == 0
    keys = ("patch", "overlap", "boundary", "weights", "noise", "mean")
    for out, expected in (
        (patched, [[12, 16], 3, 0, "ramp", "shared", "whole"]),
        (whole, [None, None, 0, "ramp", None, None]),
    ):
        sampling = json.loads((out / "zarr.json").read_text())["attributes"][IDENTITY_ATTR][
            "request"
        ]["sampling"]
        assert [sampling[k] for k in keys] == expected
    # the explicit values of the defaults are the same request: nothing is left to compute
    capsys.readouterr()
    assert (
        main(
            [
                *base,
                "--patch",
                "12",
                "16",
                "--overlap",
                "3",
                "--boundary",
                "0",
                "--zarr",
                str(patched),
            ]
        )
        == 0
    )
    assert "0 block(s) written" in capsys.readouterr().err
    # a regression mean computed patch by patch is another request
    rc, lines = _run([*base, "--patch", "12", "16", "--patch-mean", "patches", "--zarr",
                      str(patched)], capsys)  # fmt: skip
    assert rc == 2 and 'request.sampling.mean: stored "whole", requested "patches"' in _error_line(
        lines
    )


def test_generate_refuses_a_store_of_another_request_naming_the_field(inputs, tmp_path, capsys):
    root, _ = inputs
    out = tmp_path / "out.zarr"
    assert main(_args(root, out, "--times", "2020-01-01T00:00")) == 0
    rc, lines = _run(_args(root, out, "--times", "2020-01-01T00:00", "--seed", "9"), capsys)
    line = _error_line(lines)
    assert (
        rc == 2
        and "different request" in line
        and "request.sampling.seed: stored 0, requested 9" in line
    )
    assert "--overwrite" in line and "another --zarr" in line and str(out) in line
    assert main(_args(root, out, "--times", "2020-01-01T00:00", "--seed", "9", "--overwrite")) == 0
    assert xr.open_zarr(out).attrs["corrdiff_seed"] == 9
    rc, lines = _run(_args(root, tmp_path / "x.zarr", "--times", "2031-01-01"), capsys)
    assert rc == 2 and "not in the dataset" in _error_line(lines)
    assert not (tmp_path / "x.zarr").exists()


def test_overwrite_never_replaces_a_user_directory_file_or_foreign_store(inputs, tmp_path, capsys):
    root, _ = inputs
    user_dir = tmp_path / "results"
    user_dir.mkdir()
    (user_dir / "notes.txt").write_text("my notes")
    foreign = tmp_path / "foreign.zarr"
    xr.Dataset({"a": ("x", np.arange(3.0))}).to_zarr(foreign)
    user_file = tmp_path / "paper.nc"
    user_file.write_bytes(b"not ours")
    for flag, target in (("--zarr", user_dir), ("--zarr", foreign), ("--netcdf", user_file)):
        out = target if flag == "--zarr" else tmp_path / "ok.zarr"
        argv = _args(root, out, "--times", "2020-01-01T00:00", "--overwrite")
        if flag == "--netcdf":
            argv += ["--netcdf", str(target)]
        rc, lines = _run(argv, capsys)
        line = _error_line(lines)
        assert rc == 2 and str(target) in line and "did not write" in line, (target, line)
    assert (user_dir / "notes.txt").read_text() == "my notes" and sorted(os.listdir(user_dir)) == [
        "notes.txt"
    ]
    assert xr.open_zarr(foreign).a.values.tolist() == [0.0, 1.0, 2.0]
    assert user_file.read_bytes() == b"not ours"
    assert not (tmp_path / "ok.zarr").exists()  # refused before anything was written


def test_a_foreign_progress_directory_is_never_touched(inputs, tmp_path, capsys):
    root, _ = inputs
    records = tmp_path / "out.zarr.progress"
    records.mkdir()
    (records / "mine").write_text("user data")
    rc, lines = _run(
        _args(root, tmp_path / "out.zarr", "--times", "2020-01-01T00:00", "--overwrite"), capsys
    )
    assert rc == 2 and str(records) in _error_line(lines)
    assert sorted(os.listdir(records)) == ["mine"] and not (tmp_path / "out.zarr").exists()


def test_netcdf_onto_an_existing_file_needs_overwrite_and_is_kept_for_its_request(
    inputs, tmp_path, capsys
):
    root, _ = inputs
    nc = tmp_path / "out.nc"
    first = _args(root, tmp_path / "a.zarr", "--times", "2020-01-01T00:00", "--netcdf", str(nc))
    assert main(first) == 0
    before = nc.read_bytes()
    rc, lines = _run(
        _args(
            root,
            tmp_path / "b.zarr",
            "--times",
            "2020-01-01T00:00",
            "--seed",
            "1",
            "--netcdf",
            str(nc),
        ),
        capsys,
    )
    line = _error_line(lines)
    assert rc == 2 and str(nc) in line and "request.sampling.seed" in line and "--overwrite" in line
    assert nc.read_bytes() == before
    assert not (tmp_path / "b.zarr").exists()  # checked before any computing
    rc, lines = _run(first, capsys)  # the same request again: complete, kept as it is
    assert rc == 0 and any("already holds this request" in line for line in lines)
    assert nc.read_bytes() == before
    assert (
        main(
            _args(
                root,
                tmp_path / "b.zarr",
                "--times",
                "2020-01-01T00:00",
                "--seed",
                "1",
                "--netcdf",
                str(nc),
                "--overwrite",
            )
        )
        == 0
    )
    with netCDF4.Dataset(nc) as f:
        assert json.loads(f.getncattr(IDENTITY_ATTR))["request"]["sampling"]["seed"] == 1


BAD_OPTIONS = [
    (["--members", "0"], "--members", "0"),
    (["--members", "two"], "--members", "two"),
    (["--seed", "-1"], "--seed", "-1"),
    (["--steps", "0"], "--steps", "0"),
    (["--batch-size", "0"], "--batch-size", "0"),
    (["--n-workers", "-2"], "--n-workers", "-2"),
    (["--n-workers", "0"], "--n-workers", "0"),
    (["--threads-per-worker", "0"], "--threads-per-worker", "0"),
    (["--torch-threads", "0"], "--torch-threads", "0"),
    (["--patch", "0"], "--patch", "0"),
    (["--patch", "8", "8", "8"], "--patch", "8, 8, 8"),
    (["--overlap", "-1"], "--overlap", "-1"),
    (["--boundary", "-3"], "--boundary", "-3"),
    (["--time-range", "2020-01-01T00", "2020-01-01T05", "0h"], "--time-range", "0h"),
    (["--time-range", "2020-01-01T00", "2020-01-01T05", "soon"], "--time-range", "soon"),
    (["--time-range", "2020-01-02", "2020-01-01"], "--time-range", "2020-01-01"),
    (["--time-range", "2020-01-01"], "--time-range", "2020-01-01"),
    (["--time-range", "yesterday", "2020-01-01"], "--time-range", "yesterday"),
    (["--times", "2020-13-45"], "--times", "2020-13-45"),
    (["--chunks", "y=0"], "--chunks", "0"),
    (["--chunks", "z=4"], "--chunks", "z=4"),
    (["--chunks", "y"], "--chunks", "'y'"),
    (["--sampler", "rho"], "--sampler", "rho"),
    (["--param", "cache_dir"], "--param", "cache_dir"),
    (["--device", "gpu0"], "--device", "gpu0"),
]


@pytest.mark.parametrize(
    ("extra", "option", "value"), BAD_OPTIONS, ids=[" ".join(b[0]) for b in BAD_OPTIONS]
)
def test_a_bad_option_value_gives_one_line_naming_it_and_exit_2(
    tmp_path, capsys, extra, option, value
):
    argv = [
        "generate",
        "--data",
        str(tmp_path / "d.zarr"),
        "--checkpoint",
        str(tmp_path / "m"),
        "--zarr",
        str(tmp_path / "o.zarr"),
        *extra,
    ]
    rc, lines = _run(argv, capsys)
    line = _error_line(lines)
    assert rc == 2 and f"argument {option}" in line and value in line, line
    assert not (tmp_path / "o.zarr").exists()


def test_option_errors_found_when_running_are_one_line_with_exit_2(inputs, tmp_path, capsys):
    root, _ = inputs
    out = tmp_path / "o.zarr"
    cases = [
        (
            [
                "generate",
                "--catalog",
                "demo",
                "--checkpoint",
                str(root / "model.safetensors"),
                "--zarr",
                str(out),
            ],
            "--catalog needs --entry",
        ),
        (_args(root, out, "--entry", "demo_tiny"), "--entry goes with --catalog, not --data"),
        (
            _args(root, out, "--param", "seed=1"),
            "--param ['seed'] only apply to a catalog:NAME/ENTRY",
        ),
        (
            [
                "generate",
                "--data",
                "catalog:demo",
                "--checkpoint",
                str(root / "model.safetensors"),
                "--zarr",
                str(out),
            ],
            "--data 'catalog:demo' is not of the form catalog:NAME/ENTRY",
        ),
        (
            [
                "generate",
                "--catalog",
                "demo",
                "--entry",
                "a/demo_tiny",
                "--checkpoint",
                str(root / "model.safetensors"),
                "--zarr",
                str(out),
            ],
            "is an entry name, not a path",
        ),
        (
            _args(root, out, "--time-range", "2030-01-01", "2030-01-02"),
            "the time selection is empty",
        ),
        (_args(root, out, "--patch", "8", "--overlap", "8"), "overlap"),
    ]
    for argv, message in cases:
        rc, lines = _run(argv, capsys)
        assert rc == 2 and message in _error_line(lines), (argv, lines)
    assert not out.exists()


def test_interrupted_generate_completes_only_missing_blocks_and_matches_a_clean_run(
    inputs, tmp_path
):
    root, _ = inputs
    clean, killed = tmp_path / "clean.zarr", tmp_path / "killed.zarr"
    # one member per call and per block: 12 blocks to interrupt
    extra = (
        "--members",
        "2",
        "--batch-size",
        "1",
        "--time-range",
        "2020-01-01T00",
        "2020-01-01T05",
    )
    assert main(_args(root, clean, *extra)) == 0
    total = len(progress(clean))
    assert total == 12
    cmd = [sys.executable, "-m", "corrdiff_xr.cli", *_args(root, killed, *extra)]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 120
    while time.time() < deadline and not progress(killed) and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(progress(killed))
    assert 0 < done < total, f"kill landed outside the run ({done} of {total} blocks done)"
    rerun = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert f"{total - done} block(s) written, {done} already complete" in rerun.stderr
    _same_store(clean, killed)


def test_generate_reads_an_intake_catalog_entry(inputs, tmp_path):
    root, _ = inputs
    out = tmp_path / "cat.zarr"
    args = [
        "generate",
        "--catalog",
        "demo",
        "--entry",
        "demo_tiny",
        "--param",
        f"cache_dir={tmp_path / 'cache'}",
        "--checkpoint",
        str(root / "model.safetensors"),
        "--steps",
        "1",
        "--times",
        "2020-01-01T02:00",
        "--zarr",
        str(out),
        "--torch-threads",
        "1",
    ]
    assert main(args) == 0
    written = xr.open_zarr(out, consolidated=False)
    assert written.sizes == {"member": 1, "time": 1, "y": 16, "x": 16}
    assert str(written.time.values[0]).startswith("2020-01-01T02:00")
    data = written.attrs[IDENTITY_ATTR]["request"]["data"]
    assert data == {
        "catalog": "demo",
        "entry": "demo_tiny",
        "params": {"cache_dir": str(tmp_path / "cache")},
    }


def test_data_catalog_spec_is_the_same_source_as_catalog_and_entry(inputs, tmp_path, capsys):
    root, _ = inputs
    out, cache = tmp_path / "cat.zarr", tmp_path / "cache"
    common = [
        "--param",
        f"cache_dir={cache}",
        "--checkpoint",
        str(root / "model.safetensors"),
        "--steps",
        "1",
        "--times",
        "2020-01-01T01:00",
        "2020-01-01T02:00",
        "--zarr",
        str(out),
        "--torch-threads",
        "1",
    ]
    rc, _ = _run(["generate", "--data", "catalog:demo/demo_tiny", *common], capsys)
    assert rc == 0
    written = xr.open_zarr(out, consolidated=False)
    assert written.sizes == {"member": 1, "time": 2, "y": 16, "x": 16}
    data = written.attrs[IDENTITY_ATTR]["request"]["data"]
    assert data == {"catalog": "demo", "entry": "demo_tiny", "params": {"cache_dir": str(cache)}}
    # recorded alike, so the other spelling finds its own request and resumes (nothing to do)
    rc, lines = _run(["generate", "--catalog", "demo", "--entry", "demo_tiny", *common], capsys)
    assert rc == 0 and "0 block(s) written, 2 already complete of 2" in lines[-1], lines


def test_a_relative_catalog_path_in_data_is_recorded_absolute(inputs, tmp_path, monkeypatch):
    import shutil

    from corrdiff_xr.data.catalog import catalog_dir

    root, _ = inputs
    shutil.copy(catalog_dir() / "demo.yaml", tmp_path / "mine.yaml")
    monkeypatch.chdir(tmp_path)
    args = [
        "generate",
        "--data",
        "catalog:mine.yaml/demo_tiny",
        "--param",
        "cache_dir=cache",
        "--checkpoint",
        str(root / "model.safetensors"),
        "--steps",
        "1",
        "--times",
        "2020-01-01T02:00",
        "--zarr",
        "out.zarr",
        "--torch-threads",
        "1",
    ]
    assert main(args) == 0
    data = xr.open_zarr(tmp_path / "out.zarr", consolidated=False).attrs[IDENTITY_ATTR]["request"][
        "data"
    ]
    assert data == {
        "catalog": str(tmp_path / "mine.yaml"),
        "entry": "demo_tiny",
        "params": {"cache_dir": "cache"},
    }


def test_a_patch_larger_than_the_grid_is_named_by_its_option(inputs, tmp_path, capsys):
    root, _ = inputs
    argv = _args(root, tmp_path / "out.zarr")
    argv[argv.index("--patch") + 1] = "32"
    rc, lines = _run(argv, capsys)
    assert rc != 0
    assert "--patch: (32, 32) is larger than the fine grid (16, 16)" in _error_line(lines)
    assert not (tmp_path / "out.zarr").exists()
