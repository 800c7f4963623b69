"""Loader throughput: our chunk-shuffle loader vs the raw Zarr ceiling and the train step.

Measured side by side in one run, on the same synthetic canonical store, once on local disk
and once behind moto's S3 server on 127.0.0.1:

* ``raw_zarr``: every chunk of every variable read straight into numpy with zarr (no
  regridding, normalisation or shuffling): the ceiling of any loader on this store;
* ``loader``: :class:`corrdiff_xr.training.loader.ChunkShuffleLoader` streaming ``--epochs`` shuffled
  epochs (lazy pair, bilinear regridding of the coarse inputs, codec normalisation, in-memory
  shuffle), in this process (``loader``) and with ``--workers`` forked workers;
* ``xbatcher_naive``: one time step per read through ``xbatcher.BatchGenerator`` (the baseline
  the chunk-aligned design replaces; measured on a prefix only, it is slow;
  ``benchmarks/_loader_baselines.py``);
* ``train_step``: samples/s consumed by one optimiser step of the CorrDiff-Mini regression UNet
  (forward, backward, Adam) at the same grid size.

Ratios: ``loader_vs_raw_zarr`` (target >= 0.8) and ``loader_vs_train_step`` (target >= 10).

    python benchmarks/loader.py --json benchmarks/results/loader.json

The loader's blocks are xbatcher windows read through its torch dataset
(:mod:`corrdiff_xr.training.xbatcher_blocks`). ``--vs-frozen`` streams it against a frozen copy
of the read road before that (``_loader_baselines.FrozenLoader``), alternating, on the same
disk store, in this process and with ``--workers``; the median ratio (target >= 0.9) is merged
into the JSON as ``xbatcher_road_vs_frozen``:

    python benchmarks/loader.py --vs-frozen --repeats 3 --epochs 6 --json benchmarks/results/loader.json

Real sizes (``--preset``, merged into the JSON as ``preset_<name>``; local Zarr only: writing
the 1 GB CONUS store through the S3 emulator costs minutes on two cores):

* ``taiwan``: 448 x 448 fine, 12 inputs on a 36 x 40 ERA5 grid (latitude descending),
  4 targets, whole images;
* ``conus``: 1056 x 1792 fine with 448 x 448 training patches, 38 inputs on 129 x 301,
  8 targets.

Each preset reports, per 8-step block, the stages a reading worker runs: ``read`` (chunks into
numpy), then either ``cpu_encode`` (numpy regrid + normalise + crop: today's path) or ``ship``
(reorder, crop and cast the raw targets: the device path), and ``device_encode`` (the torch op
that replaces ``cpu_encode``, timed here on this CPU with one thread: on a GPU it takes a few
ms). ``samples_per_s_per_core`` follows from them (one core per worker). The loader itself
runs end to end with 1 and 2 workers in both modes (device mode encodes in this process, on
the CPU, here), against ``raw_zarr``.

The GPU demand yardstick: FLOPs per training sample of the normal-size networks
(``configs/regression_normal.yaml``, ``diffusion_normal.yaml``: forward + backward, counted
with ``torch.utils.flop_counter`` on the meta device, so nothing is computed), against an
H100's dense bf16 peak (989 TFLOP/s) at 40 % MFU: the samples/s one GPU consumes.
"16 cores feed 8 GPUs" needs ``samples_per_s_per_core >= 8 x that / 16``.

    python benchmarks/loader.py --preset taiwan --json benchmarks/results/loader.json
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
from corrdiff_xr.training.loader import ChunkShuffleLoader

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.loader
    from _loader_baselines import compare_frozen, xbatcher_batches
except ImportError:
    from benchmarks._loader_baselines import compare_frozen, xbatcher_batches


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
    static = loader.dataset.static("sync")  # static fields are read once, on first use
    blocks = [loader._read_block(i, scheduler="sync") for i in range(loader.blocks_per_epoch)]

    def read():
        for i in range(loader.blocks_per_epoch):
            loader._read_block(i, scheduler="sync")

    def encode():
        for block, order in blocks:
            codec.encode_arrays(
                {**block.coarse, **static}, role="inputs", order=order, weights=loader._weights
            )
            codec.encode_arrays(block.targets, role="targets", order=order)

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


#: real CorrDiff sizes: fine grid, coarse ERA5 grid, inputs, targets, training patch
PRESETS = {
    "taiwan": dict(fine=(448, 448), coarse=(36, 40), inputs=12, targets=4, patch=None,
                   lat=(21.9, 25.3), lon=(118.0, 122.0), north=26.0, west=116.0),
    "conus": dict(fine=(1056, 1792), coarse=(129, 301), inputs=38, targets=8, patch=(448, 448),
                  lat=(25.0, 50.0), lon=(235.0, 293.0), north=53.0, west=225.0),
}  # fmt: skip
NOTE = (
    "CPU only: loader_device_* rows run the torch encode on this CPU in the main process; "
    "samples_per_s_per_core_* and worker_*_vs_raw_zarr are a reading worker's own rate "
    "(read + cpu_encode, or read + ship), what a GPU-encoding run asks of each core; whole "
    "images travel as read and the main process takes each batch's rows "
    "(main_take_rows_ms_per_block)"
)
H100_BF16_DENSE = 989e12  # FLOP/s
MFU = 0.4


def _coord(values, dims, lat: bool) -> tuple:
    name, units = ("latitude", "degrees_north") if lat else ("longitude", "degrees_east")
    return dims, values, {"standard_name": name, "units": units, "long_name": name}


def preset_dataset(spec: dict, nt: int, chunk: int):
    """A lazy canonical pair of the preset's sizes: ERA5-like coarse grid (0.25 degrees,
    latitude descending, longitudes 0..360) around a rectilinear fine lat/lon grid."""
    import dask.array as da
    import pandas as pd
    import xarray as xr

    (ny, nx), (ncy, ncx) = spec["fine"], spec["coarse"]
    lat, lon = np.linspace(*spec["lat"], ny), np.linspace(*spec["lon"], nx)
    clat = spec["north"] - 0.25 * np.arange(ncy)
    clon = spec["west"] + 0.25 * np.arange(ncx)
    rng = da.random.default_rng(0)

    def field(shape, chunks, mean, std):
        return (mean + std * rng.standard_normal(shape, chunks=chunks)).astype(np.float32)

    cdims, fdims = ("time", "y_coarse", "x_coarse"), ("time", "y", "x")
    attrs = lambda n, u: {"units": u, "long_name": n}
    data = {
        f"era5_{k}": (cdims, field((nt, ncy, ncx), (chunk, ncy, ncx), 280.0, 10.0), attrs(k, "K"))
        for k in range(spec["inputs"])
    }
    data |= {
        f"target_{k}": (fdims, field((nt, ny, nx), (chunk, ny, nx), 280.0, 10.0), attrs(k, "K"))
        for k in range(spec["targets"])
    }
    coords = {
        "time": ("time", pd.date_range("2020-01-01", periods=nt, freq="1h"), {"long_name": "time"}),
        "y": _coord(lat, "y", True),
        "x": _coord(lon, "x", False),
        "lat": _coord(np.repeat(lat[:, None], nx, 1), ("y", "x"), True),
        "lon": _coord(np.repeat(lon[None, :], ny, 0), ("y", "x"), False),
        "y_coarse": _coord(clat, "y_coarse", True),
        "x_coarse": _coord(clon, "x_coarse", False),
        "lat_coarse": _coord(np.repeat(clat[:, None], ncx, 1), cdims[1:], True),
        "lon_coarse": _coord(np.repeat(clon[None, :], ncy, 0), cdims[1:], False),
    }
    return xr.Dataset(data, coords=coords, attrs={"Conventions": "CF-1.8"})


def network_flops(n_in: int, n_out: int, shape: tuple[int, int]) -> dict:
    """FLOPs per training sample (forward + backward) of the normal-size networks at
    ``shape``, counted on the meta device (shapes only, nothing computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    from corrdiff_xr.config import EDMConfig, NetworkConfig
    from corrdiff_xr.edm import regression_loss, residual_loss
    from corrdiff_xr.model import CorrDiff

    names_in, names_out = [f"i{k}" for k in range(n_in)], [f"o{k}" for k in range(n_out)]
    codec = Codec(
        tuple(names_in), tuple(names_out), (), {n: (0.0, 1.0) for n in names_in + names_out}
    )
    out = {}
    with torch.device("meta"):
        model = CorrDiff(
            codec,
            img_shape=shape,
            regression_network=NetworkConfig.preset("normal", embedding_type="zero"),
            residual_network=NetworkConfig.preset("normal"),
        )
        x, y = torch.randn(1, n_in, *shape), torch.randn(1, n_out, *shape)
        with FlopCounterMode(display=False) as count:
            regression_loss(model.regression, x, y).backward()
        out["regression"] = count.get_total_flops()
        with FlopCounterMode(display=False) as count:
            with torch.no_grad():
                mean = model.regression(x)
            den = lambda xn, sigma, *, condition, offsets: model.residual(
                xn, sigma, condition=condition, offsets=offsets
            )
            residual_loss(den, x, y, edm=EDMConfig(), mean=mean).backward()
        out["diffusion"] = count.get_total_flops()
    out["parameters_regression"] = sum(p.numel() for p in model.regression.parameters())
    return out


def _block_stages(pair, codec, patch, repeats: int) -> dict:
    """Milliseconds per block of each stage a reading worker runs, in this thread."""
    cpu = ChunkShuffleLoader(pair, codec, batch_size=1, epochs=1, seed=1, patch_shape=patch)
    dev = ChunkShuffleLoader(
        pair, codec, batch_size=1, epochs=1, seed=1, patch_shape=patch, encode_device="cpu"
    )
    n = cpu.blocks_per_epoch
    cpu._read_item(0, scheduler="sync")  # static fields are read once, on first use
    read = _best(lambda: [cpu._read_block(i, scheduler="sync") for i in range(n)], repeats)
    cpu_item = _best(lambda: [cpu._read_item(i, scheduler="sync") for i in range(n)], repeats)
    raw = [dev._read_item(i, scheduler="sync") for i in range(n)]
    blocks = [(*dev._read_block(i, scheduler="sync"), 0) for i in range(n)]
    ship = _best(lambda: [dev._raw_item(*b) for b in blocks], repeats)  # after the read
    # whole images travel as read; the main process takes each batch's rows when cutting
    take = _best(lambda: [dev._take_rows([r]) for r in raw], repeats) if patch is None else 0.0
    encoder = dev._device_encoder()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        batches = [dev._cut([r], len(r["time_index"]), size=len(r["time_index"]))[0] for r in raw]
        encode = _best(lambda: [encoder(b) for b in batches], repeats)
    finally:
        torch.set_num_threads(threads)
    ms = lambda t: 1e3 * t / n
    return {
        "read_ms_per_block": ms(read),
        "cpu_encode_ms_per_block": ms(cpu_item - read),
        "ship_ms_per_block": ms(ship),
        "main_take_rows_ms_per_block": ms(take),
        "device_encode_on_cpu_ms_per_block": ms(encode),
    }


def run_preset(name: str, args) -> dict:
    """One preset on local Zarr: stages, loader end to end (1 and 2 workers, both modes), raw
    Zarr, and the GPU demand yardstick."""
    import os

    from corrdiff_xr.data import open_pair

    spec = PRESETS[name]
    load_start = " ".join(f"{v:.2f}" for v in os.getloadavg())
    ds = preset_dataset(spec, args.nt, args.chunk)
    names = list(ds.data_vars)
    stats = {n: (280.0, 10.0) for n in names}
    inputs = tuple(n for n in names if n.startswith("era5_"))
    codec = Codec(inputs, tuple(n for n in names if n.startswith("target_")), (), stats)
    patch = spec["patch"]
    out: dict = {"fine": list(spec["fine"]), "coarse": list(spec["coarse"]),
                 "inputs": spec["inputs"], "targets": spec["targets"],
                 "patch": list(patch) if patch else None, "nt": args.nt, "chunk": args.chunk,
                 "batch": args.batch, "repeats": args.repeats, "cpus": os.cpu_count(),
                 "torch": torch.__version__}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / f"{name}.zarr")
        ds.to_zarr(path, mode="w")
        pair = open_pair(path)
        with dask.config.set(scheduler="threads"):
            _raw_read(path, names, args.nt, args.chunk)  # warm caches equally for all
            raw = args.nt / _best(lambda: _raw_read(path, names, args.nt, args.chunk), args.repeats)
            out["raw_zarr_samples_per_s"] = raw
            out |= _block_stages(pair, codec, patch, args.repeats)
            for mode, device in (("cpu", None), ("device", "cpu")):
                for w in (1, 2):
                    rate = args.nt / _best(
                        lambda w=w, d=device: _stream(pair, codec, patch, w, d, args.batch),
                        args.repeats,
                    )
                    out[f"loader_{mode}_encode_{w}w_samples_per_s"] = rate
                    out[f"loader_{mode}_encode_{w}w_vs_raw_zarr"] = rate / raw
    block = args.chunk
    per_core_cpu = block / (1e-3 * (out["read_ms_per_block"] + out["cpu_encode_ms_per_block"]))
    per_core_dev = block / (1e-3 * (out["read_ms_per_block"] + out["ship_ms_per_block"]))
    out["samples_per_s_per_core_cpu_encode"] = per_core_cpu
    out["samples_per_s_per_core_device_encode"] = per_core_dev
    # a worker's rate against the raw read of the same blocks (one core each)
    out["worker_cpu_encode_vs_raw_zarr"] = per_core_cpu / out["raw_zarr_samples_per_s"]
    out["worker_device_encode_vs_raw_zarr"] = per_core_dev / out["raw_zarr_samples_per_s"]
    flops = network_flops(spec["inputs"], spec["targets"], patch or spec["fine"])
    for task in ("regression", "diffusion"):
        need = MFU * H100_BF16_DENSE / flops[task]
        out[f"{task}_tflop_per_sample"] = flops[task] / 1e12
        out[f"{task}_h100_samples_per_s_at_40pct_mfu"] = need
        # 16 cores feed 8 GPUs: two cores per GPU
        out[f"{task}_16_cores_feed_8_gpus_cpu_encode"] = 2 * per_core_cpu >= need
        out[f"{task}_16_cores_feed_8_gpus_device_encode"] = 2 * per_core_dev >= need
    out["parameters_regression_million"] = flops["parameters_regression"] / 1e6
    out["note"] = NOTE
    out["load_average_start"] = load_start
    out["load_average_end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return out


def _stream(pair, codec, patch, workers: int, device, batch: int) -> int:
    loader = ChunkShuffleLoader(
        pair, codec, batch_size=batch, epochs=1, seed=1, patch_shape=patch,
        num_workers=workers, encode_device=device,
    )  # fmt: skip
    return sum(len(b) for b in loader)


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
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a real size (see above)")
    parser.add_argument(
        "--vs-frozen", action="store_true", help="today's loader against the frozen old road"
    )
    args = parser.parse_args(argv)
    if args.vs_frozen:
        result = {"xbatcher_road_vs_frozen": compare_frozen(args, warm=_raw_read)}
        print(json.dumps(result, indent=2))
        if args.json:  # merged: the other rows stay
            old = json.loads(args.json.read_text()) if args.json.exists() else {}
            args.json.write_text(json.dumps(old | result, indent=2) + "\n")
        return 0
    if args.preset:
        result = {f"preset_{args.preset}": run_preset(args.preset, args)}
        text = json.dumps(result, indent=2)
        print(text)
        if args.json:  # merged: the 64 x 64 results and other presets stay
            old = json.loads(args.json.read_text()) if args.json.exists() else {}
            args.json.write_text(json.dumps(old | result, indent=2) + "\n")
        return 0

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
    if args.json:  # merged: the presets and the road comparison stay
        args.json.parent.mkdir(parents=True, exist_ok=True)
        old = json.loads(args.json.read_text()) if args.json.exists() else {}
        args.json.write_text(json.dumps(old | results, indent=2) + "\n")
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
