"""Loader throughput: our chunk-shuffle loader vs the raw Zarr ceiling and the train step.

Measured side by side in one run, on the same synthetic canonical store, once on local disk
and once behind moto's S3 server on 127.0.0.1:

* ``raw_zarr``: every chunk of every variable read straight into numpy with zarr (no
  regridding, normalisation or shuffling): the ceiling of any loader on this store;
* ``loader``: :class:`corrdiff_xr.training.loader.ChunkShuffleLoader` streaming ``--epochs`` shuffled
  epochs (lazy pair, bilinear regridding of the coarse inputs, codec normalisation, in-memory
  shuffle), in this process (``loader``) and with ``--workers`` forked workers;
* ``xbatcher_naive``: one time step per read through ``xbatcher.BatchGenerator`` (the baseline
  the chunk-aligned design replaces; measured on a prefix only, it is slow);
* ``train_step``: samples/s consumed by one optimiser step of the CorrDiff-Mini regression UNet
  (forward, backward, Adam) at the same grid size.

Ratios: ``loader_vs_raw_zarr`` (target >= 0.8) and ``loader_vs_train_step`` (target >= 10).

    python benchmarks/loader.py --json benchmarks/results/loader.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import dask
import numpy as np
import torch
import zarr

from corrdiff_xr.codec import Codec
from corrdiff_xr.data import open_pair, synthetic_dataset
from corrdiff_xr.training.loader import ChunkShuffleLoader, xbatcher_batches


def _best(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls (the least disturbed by other processes)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _raw_read(store, names: list[str], nt: int, chunk: int) -> None:
    group = zarr.open_group(store, mode="r")
    for start in range(0, nt, chunk):
        for name in names:
            arr = group[name]
            if arr.ndim == 3:
                np.asarray(arr[start : start + chunk])
    for name in names:  # static fields: once
        if group[name].ndim == 2:
            np.asarray(group[name][...])


def _loader_epochs(pair, codec, batch: int, workers: int, epochs: int) -> int:
    # one loader streaming several epochs, as in training (worker start-up is paid once)
    n = 0
    for b in ChunkShuffleLoader(
        pair, codec, batch_size=batch, epochs=epochs, seed=1, num_workers=workers
    ):
        n += len(b)
    return n


def _train_step_rate(codec, shape, batch: int, repeats: int) -> float:
    from corrdiff_xr.config import NetworkConfig
    from corrdiff_xr.edm import regression_loss
    from corrdiff_xr.model import CorrDiff

    torch.manual_seed(0)
    net = NetworkConfig.preset("mini", embedding_type="zero")
    model = CorrDiff(codec, img_shape=shape, regression_network=net, residual_network=None)
    opt = torch.optim.Adam(model.regression.parameters(), lr=1e-4)
    x = torch.randn(batch, len(codec.in_channels), *shape)
    y = torch.randn(batch, len(codec.out_channels), *shape)

    def step():
        opt.zero_grad()
        regression_loss(model.regression, x, y).backward()
        opt.step()

    step()  # warm-up
    return batch / _best(step, repeats)


def _stages(pair, codec, repeats: int) -> dict:
    """Milliseconds per block of the loader's two stages, one block after another in this
    thread: reading its chunks (coarse inputs and targets) and encoding them (regrid, shuffle,
    normalise into the batch arrays)."""
    loader = ChunkShuffleLoader(pair, codec, batch_size=1, epochs=1, seed=1)
    loader._read_item(0, scheduler="sync")  # static fields are read once, on first use
    blocks = [loader._read_block(i, scheduler="sync") for i in range(loader.blocks_per_epoch)]

    def read():
        for i in range(loader.blocks_per_epoch):
            loader._read_block(i, scheduler="sync")

    def encode():
        for coarse, targets, order, _ in blocks:
            codec.encode_arrays(
                {**coarse, **loader._static}, role="inputs", order=order, weights=loader._weights
            )
            codec.encode_arrays(targets, role="targets", order=order)

    n = loader.blocks_per_epoch
    return {
        "read_ms_per_block": 1e3 * _best(read, repeats) / n,
        "encode_ms_per_block": 1e3 * _best(encode, repeats) / n,
    }


def measure(
    store, pair, *, nt: int, chunk: int, batch: int, workers: int, repeats: int, epochs: int
) -> dict:
    codec = Codec.from_pair(pair)
    names = list(pair.names)
    n = nt * epochs

    def raw_epochs():
        for _ in range(epochs):
            _raw_read(store, names, nt, chunk)

    with dask.config.set(scheduler="threads"):
        _raw_read(store, names, nt, chunk)  # warm caches equally for both
        raw = n / _best(raw_epochs, repeats)
        ours = n / _best(lambda: _loader_epochs(pair, codec, batch, 0, epochs), repeats)
        ours_workers = (
            n / _best(lambda: _loader_epochs(pair, codec, batch, workers, epochs), repeats)
            if workers
            else None
        )
        stages = _stages(pair, codec, repeats)
        stages["raw_zarr_ms_per_block"] = 1e3 * chunk / raw
        prefix = pair.isel(time=slice(0, min(nt, 2 * chunk)))
        t0 = time.perf_counter()
        n_naive = sum(len(b) for b in xbatcher_batches(prefix, codec, batch_size=batch))
        naive = n_naive / (time.perf_counter() - t0)
    return {
        "raw_zarr_samples_per_s": raw,
        "loader_samples_per_s": ours,
        "loader_workers_samples_per_s": ours_workers,
        "xbatcher_naive_samples_per_s": naive,
        "loader_vs_raw_zarr": ours / raw,
        "loader_vs_xbatcher_naive": ours / naive,
        "stages": stages,
        "codec": codec,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--nt", type=int, default=256)
    parser.add_argument("--size", type=int, default=64, help="fine grid is size x size")
    parser.add_argument("--chunk", type=int, default=32, help="time steps per Zarr chunk")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="epochs streamed per measurement")
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--train-repeats", type=int, default=2)
    parser.add_argument("--no-s3", action="store_true")
    args = parser.parse_args(argv)

    ds = synthetic_dataset(
        ny=args.size, nx=args.size, nt=args.nt, factor=4, chunks={"time": args.chunk}
    )
    results: dict = {
        "settings": vars(args) | {"json": str(args.json)},
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": __import__("os").cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "bench.zarr")
        ds.to_zarr(path, mode="w")
        pair = open_pair(path)
        disk = measure(
            path,
            pair,
            nt=args.nt,
            chunk=args.chunk,
            batch=args.batch,
            workers=args.workers,
            repeats=args.repeats,
            epochs=args.epochs,
        )
    codec = disk.pop("codec")
    step = _train_step_rate(codec, (args.size, args.size), args.train_batch, args.train_repeats)
    disk["loader_vs_train_step"] = disk["loader_samples_per_s"] / step
    results["train_step_samples_per_s"] = step
    results["disk"] = disk
    if not args.no_s3:
        results["s3"] = _s3(ds, args, step)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


def _s3(ds, args, step_rate: float) -> dict:
    import logging
    import os

    import fsspec
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request log lines
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        opts = {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": f"http://{host}:{port}", "region_name": "eu-west-1"},
        }
        fsspec.filesystem("s3", skip_instance_cache=True, **opts).mkdir("bench")
        url = "s3://bench/bench.zarr"
        ds.to_zarr(url, mode="w", storage_options=opts)
        pair = open_pair(url, storage_options=opts)
        store = zarr.storage.FsspecStore.from_url(url, storage_options=opts, read_only=True)
        out = measure(
            store,
            pair,
            nt=args.nt,
            chunk=args.chunk,
            batch=args.batch,
            workers=args.workers,
            repeats=args.repeats,
            epochs=args.epochs,
        )
        out.pop("codec")
        out["loader_vs_train_step"] = out["loader_samples_per_s"] / step_rate
        return out
    finally:
        server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
