"""Benchmark of lazy downscaling: overhead, scaling over workers, memory versus domain size,
member batching.

Writes JSON (``--json PATH``) with four ratios, each measured side by side in one run, and
one peak memory:

``lazy_overhead``
    time of ``downscale(...).compute()`` / time of the same work done by hand with tensors
    (inputs already encoded, one batched ``CorrDiff.sample`` call per time step). Target <= 1.10.
``scaling_2_workers``
    time with a LocalCluster of 1 worker / time with 2 workers; every worker has one thread
    and torch runs one thread per task. Target >= 1.7 (needs two idle cores).
``peak_mem_ratio_4x_domain``
    peak resident memory of a process streaming a 4x larger domain to Zarr / that of the base
    domain (same chunk and patch sizes), with the regression mean over the whole domain once
    per time (the default: one call on the 256 x 256 base, overlapping tiles of 256 x 256
    windows on the 512 x 512 domain, :mod:`corrdiff_xr.inference.tiled_mean`); as
    ``..._single_call`` in one call over any domain (as before the tiles), as
    ``..._mean_patches`` patch by patch. Target <= 1.2. Each is the least peak of
    ``--repeat`` runs (all recorded); the increments over the memory held before the write
    starts (imports, model, data description) are reported too.
``conus_block_peak_gib``
    peak resident memory of a process computing one output block of a 1056 x 1792 (CONUS)
    downscaling with normal-size networks (:func:`conus_block`). Target <= 8 GiB per worker.
``member_batching_speedup``
    members per second per core of the shipped demo model with the default member groups
    (``batch_size=8``: 8 sampler trajectories of one time and patch per network call) / with
    ``batch_size=1`` (one trajectory per call, what the CPU did before member groups), on a
    64x64 domain in 32x32 patches and sampled whole; one core (sync scheduler, one torch
    thread). The rows per residual-network call are recorded, checking that ``batch_size=1``
    makes one-row calls.

Timings are the best of ``--repeat`` runs. The machine's load average is recorded because the
ratios are only meaningful on otherwise idle cores.

Usage::

    python benchmarks/lazy_downscale.py --json benchmarks/results/lazy_downscale.json
    python benchmarks/lazy_downscale.py --only member_batching   # one section, printed
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

    # members in one group per block: the same one batched call per time as the direct path
    lazy = downscale(pair, model, members=members, steps=steps, chunks={"time": 1})
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
        batch_size=1,  # one member per call and per block: 8 blocks for the workers
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


def member_batching(repeat: int, *, members: int = 8, steps: int = 8, nt: int = 2) -> dict:
    """Members per second per core, one trajectory per call vs member groups, side by side."""
    import torch

    from corrdiff_xr.data import open_pair, synthetic_dataset
    from corrdiff_xr.inference import downscale
    from corrdiff_xr.inference.cache import load_model, token_for
    from corrdiff_xr.model import shipped_model_path

    torch.set_num_threads(1)
    model = str(shipped_model_path())
    data = synthetic_dataset(ny=64, nx=64, nt=nt, factor=4, seed=0, chunks={"time": 1})
    pair = open_pair(data)
    net = load_model(token_for(model))  # the cached model the block tasks use
    out = {}
    for name, patch in (("patched_32", 32), ("whole_domain", None)):
        runs = {
            label: downscale(
                pair,
                model,
                members=members,
                steps=steps,
                patch=patch,
                batch_size=size,
                threads=1,
                chunks={"member": members, "time": 1},
            )  # fmt: skip
            for label, size in (("batch1", 1), ("batched", 8))
        }
        res = {}
        for label, ds in runs.items():  # warm-up, counting the rows of every residual call
            rows: list[int] = []
            hook = net.residual.register_forward_pre_hook(
                lambda _, a, rows=rows: rows.append(len(a[0]))
            )
            try:
                ds.compute(scheduler="sync")
            finally:
                hook.remove()
            res[f"rows_per_call_{label}"] = sorted(set(rows))
        if res["rows_per_call_batch1"] != [1]:
            raise RuntimeError(f"batch_size=1 made calls of {res['rows_per_call_batch1']} rows")
        best = dict.fromkeys(runs, float("inf"))
        for _ in range(repeat):  # alternate, so that drift in the machine's speed hits both
            for label, ds in runs.items():
                t0 = time.perf_counter()
                ds.compute(scheduler="sync")
                best[label] = min(best[label], time.perf_counter() - t0)
        for label, t in best.items():
            res[f"{label}_s"] = t
            res[f"members_per_s_per_core_{label}"] = members * nt / t
        res["member_batching_speedup"] = best["batch1"] / best["batched"]
        out[name] = res
    out["setup"] = (
        f"shipped demo model, 64x64 domain, {nt} times x {members} members, {steps} Heun "
        "steps; patched_32: 32x32 patches (overlap 8); whole_domain: patch=None; one block per "
        "time, sync scheduler, one torch thread; a member = one time's field"
    )
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


def _memory_child(store: str, checkpoint: str, mean: str) -> None:
    """Stream the downscaled ``store`` to Zarr in this process and print memory figures.

    ``mean`` is PatchConfig's, or ``"whole_single"``: the whole-domain mean in one call
    whatever the domain (what ``"whole"`` did before it was tiled).
    """
    import dask
    import torch

    import corrdiff_xr.inference.tiled_mean as tiled_mean
    from corrdiff_xr.config import PatchConfig
    from corrdiff_xr.data import open_pair
    from corrdiff_xr.inference import downscale
    from corrdiff_xr.inference.store import write_zarr

    torch.set_num_threads(1)
    if mean == "whole_single":
        tiled_mean.MEAN_CORE, mean = 2**30, "whole"  # one window over any domain
    pair = open_pair(store)
    kwargs = {
        "members": 1,
        "steps": 2,
        "patch": PatchConfig(shape=(64, 64), overlap=16, mean=mean),
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


def memory(base: int, repeat: int = 1) -> dict:
    """Peak memory of streaming a (2 base)^2 domain vs a base^2 domain, each in a fresh process.

    The inputs are Zarr stores chunked like the output (64 x 64 fine, 16 x 16 coarse), written
    beforehand by this (unmeasured) process, so a block reads only its halo. Each setting
    runs ``repeat`` times and keeps the run of least peak (the allocator's layout moves the
    peak of identical runs by a few percent); every run's peak is recorded.
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
            # no bottleneck attention: with two levels its tokens would be a quarter of the
            # grid's pixels, quadratic memory over a whole 512 x 512 grid (24 GB)
            model = tiny_corrdiff(
                Codec.from_pair(pair), (size, size), channels=8, bottleneck_attention=False
            )
            ckpt = model.save(os.path.join(tmp, f"m{size}.safetensors"))
            for mean in ("whole", "whole_single", "patches"):
                runs = [
                    subprocess.run(
                        [sys.executable, __file__, "--memory-child", store, str(ckpt), mean],
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    for _ in range(repeat)
                ]
                runs = [json.loads(r.stdout.strip().splitlines()[-1]) for r in runs]
                figs[size, mean] = min(runs, key=lambda r: r["peak_kib"])
                figs[size, mean]["runs_mib"] = [r["peak_kib"] / 1024 for r in runs]
    out = {}
    variants = (("whole", ""), ("whole_single", "_single_call"), ("patches", "_mean_patches"))
    for mean, suffix in variants:
        b, big = figs[base, mean], figs[2 * base, mean]
        out |= {
            f"base_peak_mib{suffix}": b["peak_kib"] / 1024,
            f"4x_peak_mib{suffix}": big["peak_kib"] / 1024,
            f"peak_mem_ratio_4x_domain{suffix}": big["peak_kib"] / b["peak_kib"],
            f"base_increment_mib{suffix}": (b["peak_kib"] - b["before_kib"]) / 1024,
            f"4x_increment_mib{suffix}": (big["peak_kib"] - big["before_kib"]) / 1024,
            f"base_runs_peak_mib{suffix}": b["runs_mib"],
            f"4x_runs_peak_mib{suffix}": big["runs_mib"],
        }
    out["setup"] = (
        f"{base}x{base} vs {2 * base}x{2 * base} domain from Zarr chunked 64x64, 64x64 patches "
        "(overlap 16) and output chunks, 2 times, streamed with write_zarr on the sync "
        "scheduler; regression mean over the whole domain (default: one call at 256, "
        "tiles of 128 px cores + 64 px halo at 512; _single_call: one call, as before) or "
        "per patch"
    )
    return out


#: CONUS-size setting of issue 28: fine grid, inputs (38 with the static fields), patch
CONUS = {"domain": (1056, 1792), "inputs": 36, "patch": 448, "block": 224}


def _conus_child(store: str, checkpoint: str, windows_run: str) -> None:
    """Compute one output block of a CONUS-size downscaling here; print memory and times.

    The block's dependencies are its inputs and the whole-domain mean task, computed in
    tiles (:mod:`corrdiff_xr.inference.tiled_mean`). To fit a few minutes of CPU, the mean
    task runs only ``windows_run`` of its windows: the first (a corner) and the largest
    (interior, full size); every other window has the same or a smaller shape, and the
    task's domain-sized arrays (inputs, encoded inputs, output) are allocated in full.
    """
    import dask
    import numpy as np
    import torch

    import corrdiff_xr.inference.block as block
    from corrdiff_xr.data import open_pair
    from corrdiff_xr.inference import downscale
    from corrdiff_xr.inference.cache import load_model, token_for

    torch.set_num_threads(2)
    full, counted = block.windows, []

    def some_windows(domain, tiles):
        ws = full(domain, tiles)
        counted.append(len(ws))
        area = [(rw[1] - rw[0]) * (cw[1] - cw[0]) for _, _, rw, cw in ws]
        return [ws[0], ws[int(np.argmax(area))]][: int(windows_run)]

    block.windows = some_windows
    pair = open_pair(store)
    load_model(token_for(checkpoint))  # the weights, cached as the block task finds them
    before = _peak_rss_kib()
    side, patch = CONUS["block"], CONUS["patch"]
    ds = downscale(
        pair,
        checkpoint,
        members=1,
        sampler={"solver": "euler", "num_steps": 1},
        patch=patch,
        batch_size=1,
        chunks={"time": 1, "y": side, "x": side},
    )
    t0 = time.perf_counter()
    with dask.config.set(scheduler="sync"):
        ds[list(ds.data_vars)[0]].data.blocks[0, 0, 0, 0].compute()
    block_s = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "before_kib": before,
                "peak_kib": _peak_rss_kib(),
                "block_s": block_s,
                "mean_windows": counted[0],
                "mean_windows_run": int(windows_run),
            }
        )
    )


def conus_block(windows_run: int = 2) -> dict:
    """Peak memory of one block of a 1056 x 1792 downscaling with normal-size networks.

    Regression and residual networks of the ``normal`` preset (128 channels, five levels;
    ``corrdiff_xr/configs/regression_normal.yaml``), random weights; 36 regridded inputs plus
    2 static fields (synthetic fields, extra inputs are copies of ``msl``); 448 x 448 patches,
    output blocks of 224 x 224 (one patch each), one Euler step, one member, two torch
    threads; measured in a fresh process (VmHWM).
    """
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.config import NetworkConfig
    from corrdiff_xr.data import open_pair, synthetic_dataset
    from corrdiff_xr.inference.tiled_mean import mean_tiles
    from corrdiff_xr.model import CorrDiff

    (ny, nx), side = CONUS["domain"], CONUS["block"]
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "conus.zarr")
        data = synthetic_dataset(ny=ny, nx=nx, nt=1, factor=4, seed=0)
        for i in range(CONUS["inputs"] - 6):  # synthetic_dataset has six inputs
            data[f"extra_{i:02d}"] = data["msl"]
        data.chunk({"time": 1, "y": side, "x": side}).to_zarr(store, consolidated=False)
        regression = NetworkConfig.preset("normal", embedding_type="zero")
        model = CorrDiff(
            Codec.from_pair(open_pair(store)),
            img_shape=(ny, nx),
            regression_network=regression,
            residual_network=NetworkConfig.preset("normal"),
        )
        params = sum(p.numel() for p in model.parameters())
        ckpt = str(model.save(os.path.join(tmp, "normal.safetensors")))
        del model
        res = subprocess.run(
            [sys.executable, __file__, "--conus-child", store, ckpt, str(windows_run)],
            capture_output=True,
            text=True,
            check=True,
        )
    figs = json.loads(res.stdout.strip().splitlines()[-1])
    tiles = mean_tiles({"channel_mult": list(regression.channel_mult)}, (ny, nx))
    return {
        "peak_gib": figs["peak_kib"] / 2**20,
        "before_gib": figs["before_kib"] / 2**20,
        "block_s": figs["block_s"],
        "mean_tiles_core_halo": tiles,
        "mean_windows": figs["mean_windows"],
        "mean_windows_run": figs["mean_windows_run"],
        "parameters_millions": params / 1e6,
        "target": "peak <= 8 GiB per worker",
        "setup": f"{ny}x{nx} fine grid, {CONUS['inputs']} inputs + 2 static, normal-size "
        f"regression and residual SongUNets (random weights), {CONUS['patch']}x"
        f"{CONUS['patch']} patches, one {side}x{side} output block (one patch), 1 Euler "
        "step, 1 member, 2 torch threads, sync scheduler; the whole-domain mean task ran "
        f"{figs['mean_windows_run']} of its {figs['mean_windows']} windows (the corner "
        "one and a full-size interior one; the others are no larger), its domain-sized "
        "arrays in full",
    }


SECTIONS = ("lazy_overhead", "scaling", "memory", "member_batching", "conus_block")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--base", type=int, default=256, help="base domain side for memory")
    parser.add_argument(
        "--only", nargs="+", choices=SECTIONS, help="run these sections alone (default: all)"
    )
    parser.add_argument(
        "--batching-steps", type=int, default=8, help="sampler steps of member_batching"
    )
    parser.add_argument(
        "--batching-times", type=int, default=2, help="time steps of member_batching"
    )
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--conus-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        _memory_child(*args.memory_child)
        return 0
    if args.conus_child:
        _conus_child(*args.conus_child)
        return 0
    load_before = os.getloadavg()
    sections = {
        "lazy_overhead": lambda: lazy_overhead(args.repeat),
        "scaling": lambda: scaling(args.repeat),
        "memory": lambda: memory(args.base, args.repeat),
        "member_batching": lambda: member_batching(
            args.repeat, steps=args.batching_steps, nt=args.batching_times
        ),
        "conus_block": conus_block,
    }
    results = {name: sections[name]() for name in args.only or SECTIONS}
    #: section -> (its ratio, the ratio's target)
    ratios = {
        "lazy_overhead": ("lazy_overhead", "<= 1.10"),
        "scaling": ("scaling_2_workers", ">= 1.7"),
        "memory": ("peak_mem_ratio_4x_domain", "<= 1.2"),
    }
    summary = {key: results[name][key] for name, (key, _) in ratios.items() if name in results}
    if "memory" in results:
        for key in ("_single_call", "_mean_patches"):
            summary[f"peak_mem_ratio_4x_domain{key}"] = results["memory"][
                f"peak_mem_ratio_4x_domain{key}"
            ]
    if "conus_block" in results:
        summary["conus_block_peak_gib"] = results["conus_block"]["peak_gib"]
    if "member_batching" in results:
        summary["member_batching_speedup"] = {
            k: v["member_batching_speedup"]
            for k, v in results["member_batching"].items()
            if isinstance(v, dict)
        }
    summary.update(
        {
            "targets": {key: target for name, (key, target) in ratios.items() if name in results},
            "details": results,
            "machine": {
                "cpus": os.cpu_count(),
                "loadavg_before": load_before,
                "loadavg_after": os.getloadavg(),
                "python": platform.python_version(),
            },
        }
    )
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
