"""``corrdiff-xr calibrate --checkpoint PACKAGE``: a published package is calibrated on a user's
ERA5-convention archive (``--data``) against a truth on the package's output grid
(``--truth``), and the result is our checkpoint of the package's model with the chosen sampler;
``--truth`` without a package, or a package without ``--truth``, is refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr
from package_fixtures import era5_archive, write_generic_package

from corrdiff_xr.cli import main
from corrdiff_xr.config import SamplerConfig
from corrdiff_xr.inference import downscale
from corrdiff_xr.model import CorrDiff
from corrdiff_xr.model.packages import open_package


def era5(times: int = 2) -> xr.Dataset:
    return era5_archive(times)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("calpkg")
    package_dir = write_generic_package(root / "package", grid=(16, 16))
    archive = era5()
    archive.to_zarr(root / "era5.zarr", write_empty_chunks=True)  # NaN levels: no gaps
    mean = downscale(archive, open_package(package_dir), output="mean").compute()
    truth = mean.drop_vars(["lat", "lon"]).rename(y="rlat", x="rlon")  # a perfect-mean truth
    truth.to_zarr(root / "truth.zarr")
    return package_dir, str(root / "era5.zarr"), str(root / "truth.zarr")


def test_a_package_is_calibrated_into_our_checkpoint_of_its_model(stores, tmp_path, capsys):
    package_dir, archive, truth = stores
    out, table = tmp_path / "calibrated.safetensors", tmp_path / "table.json"
    rc = main(["calibrate", "--checkpoint", str(package_dir), "--data", archive, "--truth", truth,
               "--members", "2", "--out", str(out), "--json", str(table)])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    rows = json.loads(table.read_text())["table"]
    package = open_package(package_dir)
    assert rows[0]["sampler"]["num_steps"] == package.sampler.num_steps  # its own first
    assert all(np.isfinite(r["crps_fair"]) and r["per_target"].keys() == set(package.outputs)
               for r in rows)  # fmt: skip
    (chosen,) = [r["sampler"] for r in rows if r["chosen"]]
    model = CorrDiff.load(out)
    assert model.sampler_config == SamplerConfig(**chosen)
    assert model.codec.to_dict() == package.model.codec.to_dict()
    ours, theirs = model.state_dict(), package.model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_truth_without_a_package_and_a_package_without_truth_are_refused(stores, tmp_path, capsys):
    package_dir, archive, truth = stores
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"")  # refused before it is read
    out = str(tmp_path / "out.safetensors")
    rc = main(["calibrate", "--checkpoint", str(ckpt), "--data", archive, "--truth", truth,
               "--out", out])  # fmt: skip
    assert rc != 0
    assert "--truth: only for a package (a directory or zip)" in capsys.readouterr().err
    rc = main(["calibrate", "--checkpoint", str(package_dir), "--data", archive, "--out", out])
    assert rc != 0
    assert "give its coarse archive as --data PATH_OR_URL and the truth" in capsys.readouterr().err
    assert not (tmp_path / "out.safetensors").exists()
