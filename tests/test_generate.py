"""``corrdiff-xr generate``: Zarr + reference NetCDF layout, and resuming after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import netCDF4
import numpy as np
import pytest
import xarray as xr

from corrdiff_xr._inference.store import progress
from corrdiff_xr.cli import main
from corrdiff_xr.codec import Codec
from corrdiff_xr.data import open_pair, synthetic_dataset
from corrdiff_xr.testing import tiny_corrdiff


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    synthetic_dataset(ny=16, nx=16, nt=6, factor=4, seed=2).to_zarr(root / "data.zarr", consolidated=False)
    pair = open_pair(str(root / "data.zarr"))
    codec = Codec.from_pair(pair)
    # the model's channel order differs from the store's variable order, as it can in practice
    codec = Codec(codec.inputs, tuple(reversed(codec.targets)), codec.static, codec.stats, codec.attrs)
    tiny_corrdiff(codec, (16, 16)).save(root / "model.safetensors")
    return root, pair


def _args(root, out, *extra):
    return ["generate", "--data", str(root / "data.zarr"), "--checkpoint", str(root / "model.safetensors"),
            "--steps", "2", "--patch", "8", "--overlap", "2", "--zarr", str(out), "--torch-threads", "1",
            *extra]


def _same_store(a, b) -> None:
    x, y = xr.open_zarr(a, consolidated=False), xr.open_zarr(b, consolidated=False)
    assert x.attrs == y.attrs
    assert set(x.variables) == set(y.variables)
    for name in x.variables:
        np.testing.assert_array_equal(x[name].values, y[name].values, err_msg=name)


def test_generate_writes_zarr_and_the_reference_netcdf_layout(inputs, tmp_path):
    root, pair = inputs
    out, nc = tmp_path / "out.zarr", tmp_path / "out.nc"
    rc = main(_args(root, out, "--members", "2", "--seed", "4", "--netcdf", str(nc),
                    "--times", "2020-01-01T01:00", "2020-01-01T04:00"))
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
    assert not list(tmp_path.glob(".out.nc.*"))  # the temporary file was renamed away


def test_generate_refuses_a_store_of_another_request(inputs, tmp_path):
    root, _ = inputs
    out = tmp_path / "out.zarr"
    main(_args(root, out, "--times", "2020-01-01T00:00"))
    with pytest.raises(FileExistsError, match="different request"):
        main(_args(root, out, "--times", "2020-01-01T00:00", "--seed", "9"))
    assert main(_args(root, out, "--times", "2020-01-01T00:00", "--seed", "9", "--overwrite")) == 0
    with pytest.raises(SystemExit, match="not in the dataset"):
        main(_args(root, tmp_path / "x.zarr", "--times", "2031-01-01"))


def test_interrupted_generate_completes_only_missing_blocks_and_matches_a_clean_run(inputs, tmp_path):
    root, _ = inputs
    clean, killed = tmp_path / "clean.zarr", tmp_path / "killed.zarr"
    extra = ("--members", "2", "--time-range", "2020-01-01T00", "2020-01-01T05")
    assert main(_args(root, clean, *extra)) == 0
    total = len(progress(clean))
    assert total == 12
    cmd = [sys.executable, "-m", "corrdiff_xr.cli", *_args(root, killed, *extra)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
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
    args = ["generate", "--catalog", "demo", "--entry", "demo_tiny", "--param",
            f"cache_dir={tmp_path / 'cache'}", "--checkpoint", str(root / "model.safetensors"),
            "--steps", "1", "--times", "2020-01-01T02:00", "--zarr", str(out), "--torch-threads", "1"]
    assert main(args) == 0
    written = xr.open_zarr(out, consolidated=False)
    assert written.sizes == {"member": 1, "time": 1, "y": 16, "x": 16}
    assert str(written.time.values[0]).startswith("2020-01-01T02:00")
