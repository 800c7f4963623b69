"""Benchmark of lazy downscaling: overhead, scaling over workers, memory versus domain size.

Writes JSON (``--json PATH``) with three ratios, each measured side by side in one run:

``lazy_overhead``
    time of ``downscale(...).compute()`` / time of the same work done by hand with tensors
    (inputs already encoded, one batched ``CorrDiff.sample`` call per time step). Target <= 1.10.
``scaling_2_workers``
    time with a LocalCluster of 1 worker / time with 2 workers; every worker has one thread
    and torch runs one thread per task. Target >= 1.7 (needs two idle cores).
``peak_mem_ratio_4x_domain``
    peak resident memory of a process streaming a 4x larger domain to Zarr / that of the base
    domain (same chunk and patch sizes). Target <= 1.2. The increments over the memory held
    before the write starts (imports, model, data description) are reported too.

Timings are the best of ``--repeat`` runs. The machine's load average is recorded because the
ratios are only meaningful on otherwise idle cores.

Usage::

    python benchmarks/lazy_downscale.py --json benchmarks/results/lazy_downscale.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time


def _setup(ny: int, nx: int, nt: int, *, channels: int, chunks: dict | None = None):
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.data import open_pair, synthetic_dataset
    from corrdiff_xr.testing import tiny_corrdiff

    ds = synthetic_dataset(ny=ny, nx=nx, nt=nt, factor=4, seed=0, chunks=chunks)
    pair = open_pair(ds)
    codec = Codec.from_pair(pair)
    return pair, codec, tiny_corrdiff(codec, (ny, nx), channels=channels)


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def lazy_overhead(repeat: int) -> dict:
    """Whole-domain sampling: lazy graph on the sync scheduler vs direct tensor calls."""
    import torch
    import xarray as xr

    from corrdiff_xr.config import SamplerConfig
    from corrdiff_xr.inference import downscale
    from corrdiff_xr.noise import patch_generator

    torch.set_num_threads(1)
    nt, members, steps = 4, 2, 8
    pair, codec, model = _setup(64, 64, nt, channels=32, chunks={"time": 1})
    pair = pair.isel(time=slice(None))  # same lazy pair for both paths
    sources = xr.merge([pair.inputs_on_fine[list(codec.inputs)], pair.static_fields]).compute()
    x = torch.from_numpy(codec.encode_inputs(sources))
    times = sources.time.values
    sampler = SamplerConfig(num_steps=steps)
    off = torch.zeros(members, 2, dtype=torch.long)

    def direct():
        outs = []
        with torch.no_grad():
            for t in range(nt):
                xt = x[t : t + 1].expand(members, -1, -1, -1).contiguous()
                gens = [patch_generator(0, times[t], m, (0, 0)) for m in range(members)]
                outs.append(model.sample(xt, generators=gens, sampler=sampler, offsets=off))
        return [codec.decode_targets(o, sources, dims=("member",)) for o in outs]

    lazy = downscale(pair, model, members=members, steps=steps, chunks={"time": 1, "member": 1})
    lazy.compute(scheduler="sync")  # warm-up: loads the model into this process's cache
    direct()
    t_lazy = _best(lambda: lazy.compute(scheduler="sync"), repeat)
    t_direct = _best(direct, repeat)
    return {
        "lazy_s": t_lazy,
        "direct_s": t_direct,
        "lazy_overhead": t_lazy / t_direct,
        "setup": f"64x64 domain, {nt} times x {members} members, {steps} Heun steps, "
        "32-channel net, whole-domain sampling",
    }


def scaling(repeat: int) -> dict:
    """Patched ensemble on LocalClusters of 1 and 2 single-threaded worker processes."""
    from distributed import Client, LocalCluster

    from corrdiff_xr.inference import downscale

    pair, _, model = _setup(64, 64, 4, channels=16, chunks={"time": 1})
    ds = downscale(
        pair,
        model,
        members=2,
        steps=4,
        patch=32,
        overlap=8,
        threads=1,
        chunks={"time": 1, "member": 1},
    )
    out = {}
    for n in (1, 2):
        with (
            LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=":0",
            ) as cluster,
            Client(cluster) as client,
        ):
            client.wait_for_workers(n)
            client.compute(ds).result()  # warm-up: model loaded once per worker
            out[f"{n}_worker_s"] = _best(lambda: client.compute(ds).result(), repeat)
    out["scaling_2_workers"] = out["1_worker_s"] / out["2_worker_s"]
    out["setup"] = "64x64 domain, 32x32 patches (overlap 8), 4 times x 2 members = 8 blocks"
    return out


def _peak_rss_kib() -> int:
    """Peak resident memory of this process image (VmHWM).

    Not ``ru_maxrss``: a child started by subprocess inherits the parent's high-water mark
    through fork + exec, so it would report the (larger) parent's memory.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("VmHWM not found in /proc/self/status")


def _memory_child(store: str, checkpoint: str) -> None:
    """Stream the downscaled ``store`` to Zarr in this process and print memory figures."""
    import dask
    import torch

    from corrdiff_xr.data import open_pair
    from corrdiff_xr.inference import downscale
    from corrdiff_xr.inference.store import write_zarr

    torch.set_num_threads(1)
    pair = open_pair(store)
    kwargs = {
        "members": 1,
        "steps": 2,
        "patch": 64,
        "overlap": 16,
        "chunks": {"time": 1, "y": 64, "x": 64},
    }
    ds = downscale(pair, checkpoint, **kwargs)
    # warm-up on one block: model load, torch's allocator and thread pools
    downscale(pair.isel(time=[0]), checkpoint, **kwargs).t2m.data.blocks[0, 0, 0, 0].compute(
        scheduler="sync"
    )
    before = _peak_rss_kib()
    with tempfile.TemporaryDirectory() as tmp, dask.config.set(scheduler="sync"):
        write_zarr(ds, os.path.join(tmp, "out.zarr"))
    peak = _peak_rss_kib()
    print(json.dumps({"before_kib": before, "peak_kib": peak}))


def memory(base: int) -> dict:
    """Peak memory of streaming a (2 base)^2 domain vs a base^2 domain, each in a fresh process.

    The inputs are Zarr stores chunked like the output (64 x 64 fine, 16 x 16 coarse), written
    beforehand by this (unmeasured) process, so a block reads only its halo.
    """
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.data import open_pair, synthetic_dataset
    from corrdiff_xr.testing import tiny_corrdiff

    figs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in (base, 2 * base):
            store = os.path.join(tmp, f"in{size}.zarr")
            chunks = {"time": 1, "y": 64, "x": 64, "y_coarse": 16, "x_coarse": 16}
            data = synthetic_dataset(ny=size, nx=size, nt=2, factor=4, seed=0)
            data.chunk(chunks).to_zarr(store, consolidated=False)
            pair = open_pair(store)
            ckpt = tiny_corrdiff(Codec.from_pair(pair), (size, size), channels=8).save(
                os.path.join(tmp, f"m{size}.safetensors")
            )
            res = subprocess.run(
                [sys.executable, __file__, "--memory-child", store, str(ckpt)],
                capture_output=True,
                text=True,
                check=True,
            )
            figs[size] = json.loads(res.stdout.strip().splitlines()[-1])
    b, big = figs[base], figs[2 * base]
    return {
        "base_peak_mib": b["peak_kib"] / 1024,
        "4x_peak_mib": big["peak_kib"] / 1024,
        "peak_mem_ratio_4x_domain": big["peak_kib"] / b["peak_kib"],
        "base_increment_mib": (b["peak_kib"] - b["before_kib"]) / 1024,
        "4x_increment_mib": (big["peak_kib"] - big["before_kib"]) / 1024,
        "setup": f"{base}x{base} vs {2 * base}x{2 * base} domain from Zarr chunked 64x64, "
        "64x64 patches (overlap 16) and output chunks, 2 times, streamed with "
        "write_zarr on the sync scheduler",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--base", type=int, default=256, help="base domain side for memory")
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        _memory_child(*args.memory_child)
        return 0
    load_before = os.getloadavg()
    results = {
        "lazy_overhead": lazy_overhead(args.repeat),
        "scaling": scaling(args.repeat),
        "memory": memory(args.base),
    }
    summary = {
        "lazy_overhead": results["lazy_overhead"]["lazy_overhead"],
        "scaling_2_workers": results["scaling"]["scaling_2_workers"],
        "peak_mem_ratio_4x_domain": results["memory"]["peak_mem_ratio_4x_domain"],
        "targets": {
            "lazy_overhead": "<= 1.10",
            "scaling_2_workers": ">= 1.7",
            "peak_mem_ratio_4x_domain": "<= 1.2",
        },
        "details": results,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "python": platform.python_version(),
        },
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", dir=os.path.dirname(os.path.abspath(args.json)), delete=False, suffix=".tmp"
        ) as f:
            f.write(text + "\n")
        os.replace(f.name, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
