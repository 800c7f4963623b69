"""Cloud training: stream a Zarr store from moto's S3 server on 127.0.0.1 via the catalog."""

from __future__ import annotations

import pytest

from corrdiff_xr.config import TrainRunConfig, from_dict
from corrdiff_xr.model import CorrDiff
from corrdiff_xr.train import train

from _train_helpers import tiny_config


def test_training_streams_from_s3_through_the_catalog(s3_server, tmp_path, monkeypatch):
    from corrdiff_xr.data import synthetic_dataset

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    bucket = s3_server.new_bucket("train")
    url = f"s3://{bucket}/syn.zarr"
    ds = synthetic_dataset(ny=16, nx=16, nt=8, factor=4, chunks={"time": 2})
    ds.to_zarr(url, mode="w", storage_options=s3_server.storage_options)

    data = tiny_config("catalog:cloud/s3", tmp_path / "run", duration=8)
    data["data"]["catalog_params"] = {"s3_url": url, "anon": False, "endpoint_url": s3_server.endpoint_url}
    result = train(from_dict(TrainRunConfig, data))
    assert result.completed and result.nimg == 8 and result.skipped_steps == 0
    model = CorrDiff.load(result.output_dir / "model.safetensors")
    assert model.codec.out_channels == ("t2m", "tp", "u10", "v10")


def test_a_malformed_catalog_source_is_refused(tmp_path):
    from corrdiff_xr.config import ConfigError

    with pytest.raises(ConfigError, match="catalog:NAME/ENTRY"):
        train(from_dict(TrainRunConfig, tiny_config("catalog:demo", tmp_path / "x")))
