"""Downscaling on a real dask.distributed LocalCluster: equality, model cache, faults."""

from __future__ import annotations

import os
import signal
import threading
import time

import cloudpickle
import numpy as np
import pytest
import torch
import xarray as xr

from corrdiff_xr.codec import Codec
from corrdiff_xr.data import open_pair, synthetic_dataset
from corrdiff_xr.inference import downscale
from corrdiff_xr.inference.store import progress, write_zarr
from corrdiff_xr.testing import tiny_corrdiff

distributed = pytest.importorskip("distributed")
FAST = {"steps": 2, "patch": 8, "overlap": 2, "threads": 1}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    synthetic_dataset(ny=16, nx=16, nt=6, factor=4, seed=4).to_zarr(
        root / "data.zarr", consolidated=False
    )
    pair = open_pair(str(root / "data.zarr"))
    model = tiny_corrdiff(Codec.from_pair(pair), (16, 16))
    path = model.save(root / "model.safetensors")
    return root, pair, model, str(path)


def _loads() -> dict:
    from corrdiff_xr.inference import cache

    return {f"{p}@{s}": n for (p, s), n in cache.LOADS.items()}


def test_cluster_result_equals_local_result_and_loads_the_model_once_per_worker(setup, cluster):
    _, pair, _, path = setup
    # one member per block (batch_size=1: whole member groups): 12 blocks for 2 workers
    ds = downscale(
        pair, path, members=2, seed=1, batch_size=1, chunks={"time": 1, "member": 1}, **FAST
    )
    local = ds.compute(scheduler="sync")
    with distributed.Client(cluster.scheduler_address) as client:  # an existing scheduler
        remote = ds.compute()
        loads = client.run(_loads)
    for name in local.data_vars:
        np.testing.assert_array_equal(remote[name].values, local[name].values)
    n_blocks = ds.t2m.data.npartitions
    assert n_blocks == 12
    per_worker = [sum(v.values()) for v in loads.values()]
    assert all(n <= 1 for n in per_worker), loads
    assert sum(per_worker) >= 1


def test_graph_size_does_not_grow_with_the_model(setup):
    _, pair, model, _ = setup
    big = tiny_corrdiff(model.codec, (16, 16), channels=64)
    sizes = {}
    for name, m in (("small", model), ("big", big)):
        graph = downscale(pair, m, members=2, **FAST).__dask_graph__()
        sizes[name] = len(cloudpickle.dumps(dict(graph)))
    n_small = sum(p.numel() for p in model.parameters())
    n_big = sum(p.numel() for p in big.parameters())
    assert n_big > 10 * n_small  # the big model is much larger ...
    assert abs(sizes["big"] - sizes["small"]) < 0.01 * sizes["small"]  # ... the graph is not
    assert sizes["small"] < n_small * 4  # and smaller than the weights themselves


def test_killing_a_worker_mid_run_leaves_the_output_complete_and_identical(
    setup, cluster, tmp_path
):
    _, pair, _, path = setup
    ds = downscale(
        pair, path, members=2, seed=2, batch_size=1, chunks={"time": 1, "member": 1}, **FAST
    )  # 12 blocks, one member each
    clean, faulty = tmp_path / "clean.zarr", tmp_path / "faulty.zarr"
    with distributed.Client(cluster) as client:
        client.wait_for_workers(2)
        write_zarr(ds, clean, client=client)
        pids = client.run(os.getpid)
        errors = []

        def work():
            try:
                write_zarr(ds, faulty, client=client)
            except Exception as err:  # noqa: BLE001 - surfaced below
                errors.append(err)

        thread = threading.Thread(target=work)
        thread.start()
        deadline = time.time() + 120
        while time.time() < deadline and not progress(faulty):
            time.sleep(0.02)
        victim = min(pids.values())
        os.kill(victim, signal.SIGKILL)
        done_at_kill = len(progress(faulty))
        thread.join(timeout=300)
        assert not thread.is_alive() and not errors, errors
        assert done_at_kill < 12, "the kill came after the run had finished"
        client.wait_for_workers(2, timeout=60)
        assert victim not in client.run(os.getpid).values()
    assert len(progress(faulty)) == 12
    a, b = xr.open_zarr(clean, consolidated=False), xr.open_zarr(faulty, consolidated=False)
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values)


def test_local_cuda_cluster_runs_on_the_workers_gpu(setup):
    dask_cuda = pytest.importorskip("dask_cuda")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    _, pair, _, path = setup
    mean = downscale(pair, path, output="mean", **FAST)
    ens = downscale(pair, path, members=2, seed=1, **FAST)
    with dask_cuda.LocalCUDACluster(n_workers=1) as cl, distributed.Client(cl):
        gpu_mean, first, again = mean.compute(), ens.compute(), ens.compute()
    cpu_mean = downscale(pair, path, output="mean", device="cpu", **FAST).compute(scheduler="sync")
    for name in cpu_mean.data_vars:
        # the regression mean has no noise: the GPU agrees with the CPU to rounding
        np.testing.assert_allclose(
            gpu_mean[name].values, cpu_mean[name].values, rtol=1e-3, atol=1e-3
        )
        # members use CUDA generators on the GPU: reproducible there, finite
        np.testing.assert_array_equal(first[name].values, again[name].values)
        assert np.isfinite(first[name].values).all()


def test_generate_runs_on_an_existing_scheduler_address(setup, cluster, tmp_path):
    from corrdiff_xr.cli import main

    root, pair, _, path = setup
    out = tmp_path / "out.zarr"
    args = [
        "generate",
        "--data",
        str(root / "data.zarr"),
        "--checkpoint",
        path,
        "--members",
        "2",
        "--seed",
        "3",
        "--steps",
        "2",
        "--patch",
        "8",
        "--overlap",
        "2",
        "--torch-threads",
        "1",
        "--time-range",
        "2020-01-01T01",
        "2020-01-01T02",
        "--zarr",
        str(out),
        "--scheduler-address",
        cluster.scheduler_address,
    ]
    assert main(args) == 0
    expected = downscale(pair.isel(time=[1, 2]), path, members=2, seed=3, **FAST).compute(
        scheduler="sync"
    )
    written = xr.open_zarr(out, consolidated=False)
    for name in expected.data_vars:
        np.testing.assert_array_equal(written[name].values, expected[name].values)


def test_an_in_memory_model_reaches_workers_that_cannot_see_its_file(setup, cluster):
    from corrdiff_xr.inference import cache

    _, pair, model, _ = setup
    one = pair.isel(time=[0])
    with distributed.Client(cluster) as client:
        ds = downscale(one, model, members=1, seed=8, **FAST)  # registers the plugin
        path = cache._SAVED[id(model)][2]
        os.remove(path)  # as if the workers lived on another host
        client.restart()  # fresh workers run the plugin, which writes the file back
        client.wait_for_workers(2, timeout=60)
        deadline = time.time() + 30
        while not os.path.exists(path) and time.time() < deadline:
            time.sleep(0.1)
        assert os.path.exists(path)
        remote = ds.compute()
    local = ds.compute(scheduler="sync")
    for name in local.data_vars:
        np.testing.assert_array_equal(remote[name].values, local[name].values)
