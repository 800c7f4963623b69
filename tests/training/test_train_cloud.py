"""Cloud training: stream a Zarr store from moto's S3 server on 127.0.0.1 via the catalog."""

from __future__ import annotations

import pytest
from _train_helpers import tiny_config

from corrdiff_xr.config import TrainRunConfig, from_dict
from corrdiff_xr.model import CorrDiff
from corrdiff_xr.training import train


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
    data["data"]["catalog_params"] = {
        "s3_url": url,
        "anon": False,
        "endpoint_url": s3_server.endpoint_url,
    }
    result = train(from_dict(TrainRunConfig, data))
    assert result.completed and result.nimg == 8 and result.skipped_steps == 0
    model = CorrDiff.load(result.output_dir / "model.safetensors")
    assert model.codec.out_channels == ("t2m", "tp", "u10", "v10")


def test_a_malformed_catalog_source_is_refused(tmp_path):
    from corrdiff_xr.config import ConfigError

    with pytest.raises(ConfigError, match="catalog:NAME/ENTRY"):
        train(from_dict(TrainRunConfig, tiny_config("catalog:demo", tmp_path / "x")))


def test_forked_loader_workers_stream_from_s3_in_the_same_order(s3_server, monkeypatch):
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.data import open_pair, synthetic_dataset
    from corrdiff_xr.training.loader import ChunkShuffleLoader

    bucket = s3_server.new_bucket("workers")
    url = f"s3://{bucket}/syn.zarr"
    synthetic_dataset(ny=16, nx=16, nt=8, factor=4, chunks={"time": 2}).to_zarr(
        url, mode="w", storage_options=s3_server.storage_options
    )
    pair = open_pair(url, storage_options=s3_server.storage_options)
    codec = Codec.from_pair(pair)
    orders = [
        [
            b.time_index.tolist()
            for b in ChunkShuffleLoader(pair, codec, batch_size=3, epochs=1, num_workers=n)
        ]
        for n in (0, 2)
    ]
    assert orders[0] == orders[1]
    assert sorted(t for batch in orders[0] for t in batch) == list(range(8))
