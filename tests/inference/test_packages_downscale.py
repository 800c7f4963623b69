"""A published-layout package run where checkpoints run: the accessor, ``downscale`` with a
package path, ``generate --checkpoint PACKAGE`` (resumable) and ``calibrate``, on a user's
ERA5-convention archive (latitude descending, longitudes 0..360, ARCO names, levels)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr
from package_fixtures import era5_archive, write_generic_package

import corrdiff_xr  # noqa: F401  (registers ds.corrdiff)
from corrdiff_xr.cli import main
from corrdiff_xr.inference import downscale
from corrdiff_xr.inference.calibrate import calibrate
from corrdiff_xr.model.packages import open_package


def era5(times: int = 3) -> xr.Dataset:
    return era5_archive(times)


@pytest.fixture(scope="module")
def package_dir(tmp_path_factory):
    return write_generic_package(tmp_path_factory.mktemp("pkg") / "package", grid=(16, 16))


def test_the_accessor_takes_a_package_path_like_a_checkpoint(package_dir):
    archive = era5()
    via_path = archive.corrdiff.downscale(package_dir, members=2, seed=4, steps=2).compute()
    package = open_package(package_dir)
    direct = downscale(package.pair(archive), package, members=2, seed=4, steps=2).compute()
    assert via_path.attrs["corrdiff_package"] == package.source
    for name in package.outputs:
        np.testing.assert_array_equal(via_path[name].values, direct[name].values)
        assert np.isfinite(via_path[name].values).all()
    assert via_path["t2m"].dims == ("member", "time", "y", "x")
    np.testing.assert_allclose(via_path["lat"].values, package.output_grid["lat"].values)


def test_members_do_not_depend_on_the_chunking(package_dir):
    package = open_package(package_dir)
    pair = package.pair(era5())
    kw = dict(members=3, seed=1, steps=2, batch_size=1)
    one = downscale(pair, package, chunks={"time": 1, "member": 1}, **kw).compute()
    whole = downscale(pair, package, chunks={"time": 3, "member": 3}, **kw).compute()
    for name in package.outputs:
        np.testing.assert_array_equal(one[name].values, whole[name].values)


def test_generate_runs_a_package_and_resumes_without_recomputing(package_dir, tmp_path):
    store = tmp_path / "era5.zarr"
    era5().to_zarr(store)
    out = tmp_path / "out.zarr"
    args = ["generate", "--checkpoint", str(package_dir), "--data", str(store),
            "--name-map", "z500=geopotential@500", "--members", "2", "--steps", "2",
            "--zarr", str(out)]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args) == 0
        first = xr.open_zarr(out).load()
        assert main(args) == 0  # the same request: every block already complete
    again = xr.open_zarr(out).load()
    xr.testing.assert_identical(first, again)
    direct = downscale(era5(), open_package(package_dir), members=2, steps=2).compute()
    np.testing.assert_allclose(first["t2m"].values, direct["t2m"].values, rtol=0, atol=0)


def test_package_options_with_a_checkpoint_file_are_refused(tmp_path, capsys):
    from corrdiff_xr.model import shipped_model_path

    rc = main(["generate", "--checkpoint", str(shipped_model_path()), "--data", "catalog:demo/demo_tiny",
               "--regrid", "bilinear", "--zarr", str(tmp_path / "o.zarr")])  # fmt: skip
    assert rc != 0
    assert "--name-map and --regrid apply to a package" in capsys.readouterr().err


def test_calibrate_scores_a_package_against_truth_on_its_grid(package_dir):
    package = open_package(package_dir)
    archive = era5()
    mean = downscale(archive, package, output="mean").compute()
    truth = mean.drop_vars(["lat", "lon"]).rename(y="rlat", x="rlon")  # a perfect-mean truth
    pair = package.pair(archive, truth=truth)
    assert pair.targets == package.outputs
    result = calibrate(pair, package, candidates=[{"num_steps": 2}, {"num_steps": 3}], members=2)
    assert [row["sampler"]["num_steps"] for row in result.table] == [2, 3]
    assert all(np.isfinite(row["crps_fair"]) for row in result.table)


def test_a_package_samples_patch_by_patch(package_dir):
    package = open_package(package_dir)
    pair = package.pair(era5(times=1))
    whole = downscale(pair, package, members=2, seed=2, steps=2).compute()
    patched = downscale(pair, package, members=2, seed=2, steps=2, patch=8).compute()
    assert patched.attrs["corrdiff_patching"] != whole.attrs["corrdiff_patching"]
    for name in package.outputs:
        assert np.isfinite(patched[name].values).all()
        # the same mean + a residual of the same size: patches change the noise, not the scale
        ratio = patched[name].std().item() / whole[name].std().item()
        assert 0.5 < ratio < 2.0, (name, ratio)
