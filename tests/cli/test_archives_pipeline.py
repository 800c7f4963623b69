"""Native archives in object storage, registered in a catalog, straight through the pipeline:
an ERA5-like coarse archive on GCS, a rotated-pole km-scale archive with NaN over the sea on
S3 and an orography on a larger grid; train regression and diffusion from the catalog entry,
generate, and score against bilinear interpolation, with no hand-written conversion."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import xarray as xr
from _train_helpers import tiny_config

from corrdiff_xr.cli import main
from corrdiff_xr.config import TrainRunConfig, from_dict
from corrdiff_xr.data import open_source
from corrdiff_xr.data.sources.native_example import native_archives
from corrdiff_xr.model import CorrDiff
from corrdiff_xr.training import train

ENTRY = "catalog:archives/pair"


@pytest.fixture(scope="module")
def archives(s3_server, gcs_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("native")
    arch = native_archives(nt=48)
    coarse = f"gs://{gcs_server.new_bucket('era5')}/era5.zarr"
    fine = f"s3://{s3_server.new_bucket('cordex')}/tas.zarr"
    orog = str(root / "orog.zarr")
    arch["coarse"].chunk({"time": 6}).to_zarr(coarse, storage_options=gcs_server.storage_options)
    arch["fine"].chunk({"time": 2}).to_zarr(fine, storage_options=s3_server.storage_options)
    arch["orography"].to_zarr(orog)
    params = {
        "coarse_url": coarse,
        "coarse_options": gcs_server.storage_options,
        "fine_url": fine,
        "fine_options": s3_server.storage_options,
        "orography_url": orog,
    }
    return params, arch


def _quiet_train(config: dict):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return train(from_dict(TrainRunConfig, config))


def _argv(params: dict) -> list[str]:
    import json

    return [f"{k}={json.dumps(v) if isinstance(v, dict) else v}" for k, v in params.items()]


def test_train_generate_and_score_from_a_catalog_of_native_archives(archives, tmp_path):
    params, arch = archives
    reg_cfg = tiny_config(ENTRY, tmp_path / "reg", duration=8)
    reg_cfg["data"].update(catalog_params=params, valid_period=["2001-02-28T18", "2001-02-28T21"])
    reg = _quiet_train(reg_cfg)
    assert reg.completed and math.isfinite(reg.loss)
    model = CorrDiff.load(reg.output_dir / "model.safetensors")
    assert model.codec.out_channels == ("tas", "uas") and "orog" in model.codec.in_channels
    sea = np.isnan(arch["fine"]["tas"].isel(time=0, height=0).values)
    tas_mask = model.target_mask.numpy()[0]
    np.testing.assert_array_equal(tas_mask, ~sea)  # trained on land pixels only

    diff_cfg = tiny_config(
        ENTRY, tmp_path / "diff", task="diffusion",
        regression_checkpoint=str(reg.output_dir / "model.safetensors"),
    )  # fmt: skip
    diff_cfg["data"].update(reg_cfg["data"])
    diff = _quiet_train(diff_cfg)
    assert diff.completed and math.isfinite(diff.loss)

    out = tmp_path / "gen.zarr"
    gen = ["generate", "--data", ENTRY, "--param", *_argv(params), "--checkpoint",
           str(diff.output_dir / "model.safetensors"), "--members", "3", "--steps", "2",
           "--time-range", "2001-02-28T18", "2001-02-28T21", "--zarr", str(out),
           "--torch-threads", "1"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert main(gen) == 0
        pair = open_source(ENTRY, params=params)
    got = xr.open_zarr(out)
    assert got["tas"].sizes["member"] == 3 and got.sizes["time"] == 2
    tas = got["tas"].values
    assert np.isnan(tas[..., sea]).all() and np.isfinite(tas[..., ~sea]).all()
    np.testing.assert_array_equal(got["time"].values, pair.dataset["time"].values[-2:])
    # the fine archive's rotated pole comes back with the output, named by every variable
    assert got["rotated_pole"].attrs == dict(arch["fine"]["rotated_pole"].attrs)
    assert {got[n].attrs["grid_mapping"] for n in ("tas", "uas")} == {"rotated_pole"}

    truth = tmp_path / "truth.zarr"
    assert main(["convert", "source", ENTRY, str(truth), "--param", *_argv(params)]) == 0
    scores = tmp_path / "scores.nc"
    argv = ["score", str(out), "--truth", str(truth), "--baseline", "bilinear", "-o", str(scores)]
    assert main([*argv, "--metrics", "crps,mae"]) == 0
    table = xr.open_dataset(scores)["score"]
    assert set(table["forecast"].values.tolist()) == {"prediction", "bilinear"}
    assert np.isfinite(table.sel(variable="tas").values).all()  # NaN truth over the sea ignored
