"""Canonical Zarr stores written to and streamed from real object stores on 127.0.0.1.

Every protocol is opened through the same code path, the bundled ``cloud`` catalog
(``open_entry`` -> ``ZarrPairReader`` -> ``open_pair``): local ``file://``, fsspec's
``memory://``, S3 served by moto (read through s3fs, anonymously, with the endpoint given as a
catalog parameter) and GCS served by gcp-storage-emulator (read through gcsfs, token "anon").
The server fixtures live in tests/servers.py (provided to every module by conftest.py) (they also set the gcsfs switch that avoids a
60 s probe per call when offline).
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import xarray as xr

from corrdiff_xr.data import StoreError, compute_stats, synthetic_dataset, write_stats
from corrdiff_xr.data.catalog import open_entry
from corrdiff_xr.testing import raise_if_dask_computes

PROTOCOLS = ("file", "memory", "s3", "gs")
pytestmark = pytest.mark.filterwarnings("ignore:Consolidated metadata:UserWarning")


@pytest.fixture(scope="module")
def source():
    # few variables: every array is a few HTTP requests to a single-threaded local server
    ds = synthetic_dataset(ny=16, nx=16, nt=4, factor=4, seed=7, chunks={"time": 2})
    return ds[["t2m", "tp", "t2m_coarse", "orography"]].compute()


@pytest.fixture(scope="module")
def stored(source, request, tmp_path_factory):
    """``stored(protocol) -> (entry, params)``: ``source`` written once per protocol."""
    cache: dict[str, tuple[str, dict]] = {}

    def get(protocol: str) -> tuple[str, dict]:
        if protocol not in cache:
            tmp = tmp_path_factory.mktemp(protocol)
            cache[protocol] = _put(source, protocol, request, tmp)
        return cache[protocol]

    return get


def _put(source: xr.Dataset, protocol: str, request, tmp_path) -> tuple[str, dict]:
    """Write ``source`` + its stats to a store of ``protocol``; return (entry, params)."""
    name = f"pair-{uuid.uuid4().hex[:8]}.zarr"
    if protocol == "file":
        url, write_opts = str(tmp_path / name), None  # written by path, read by file:// URL
        params, entry = {"zarr_url": f"file://{url}"}, "zarr"
    elif protocol == "memory":
        url, write_opts = f"memory://{name}", None
        params, entry = {"zarr_url": url}, "zarr"
    elif protocol == "s3":
        server = request.getfixturevalue("s3_server")
        bucket = server.new_bucket(public_read=True)
        url, write_opts = f"s3://{bucket}/{name}", server.storage_options
        params = {"s3_url": url, "endpoint_url": server.endpoint_url, "anon": True}
        entry = "s3"
    else:
        server = request.getfixturevalue("gcs_server")
        bucket = server.new_bucket()
        url, write_opts = f"gs://{bucket}/{name}", server.storage_options
        params, entry = {"gs_url": url, "gcs_endpoint": server.endpoint_url}, "gcs"
    source.chunk({"time": 2}).to_zarr(url, mode="w", storage_options=write_opts)
    write_stats(url, compute_stats(source), storage_options=write_opts)
    return entry, params


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_catalog_entry_streams_the_same_data_from_every_store(protocol, source, stored):
    entry, params = stored(protocol)
    with raise_if_dask_computes():  # opening reads metadata, coordinates and stats only
        pair = open_entry("cloud", entry, **params)
        stats = pair.stats
    assert pair.dataset["t2m"].chunks[0] == (2, 2)
    for name in pair.names:
        np.testing.assert_array_equal(pair.dataset[name].values, source[name].values)
    assert float(stats["tp"].sel(stat="std")) == pytest.approx(float(source["tp"].std()), rel=1e-5)
    # the lazy regrid streams the coarse chunks from the store too
    assert pair.inputs_on_fine["t2m_coarse"].shape == (4, 16, 16)
    assert np.isfinite(pair.inputs_on_fine["t2m_coarse"].values).all()


def test_distributed_workers_stream_from_s3(source, stored):
    from dask.distributed import Client, LocalCluster

    entry, params = stored("s3")
    pair = open_entry("cloud", entry, **params)
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster),
    ):
        means = pair.fine["t2m"].mean(["y", "x"]).compute()
    np.testing.assert_allclose(means.values, source["t2m"].mean(["y", "x"]).values, rtol=1e-6)


def test_missing_object_store_path_names_the_url(s3_server):
    bucket = s3_server.new_bucket()
    url = f"s3://{bucket}/absent.zarr"
    with pytest.raises(StoreError, match=url):
        open_entry("cloud", "s3", s3_url=url, endpoint_url=s3_server.endpoint_url)
