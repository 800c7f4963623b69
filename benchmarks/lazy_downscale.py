"""Benchmark of lazy downscaling: overhead, scaling over workers, memory versus domain size,
member batching.

Writes JSON (``--json PATH``) with four ratios, each measured side by side in one run:

``lazy_overhead``
    time of ``downscale(...).compute()`` / time of the same work done by hand with tensors
    (inputs already encoded, one batched ``CorrDiff.sample`` call per time step). Target <= 1.10.
``scaling_2_workers``
    time with a LocalCluster of 1 worker / time with 2 workers; every worker has one thread
    and torch runs one thread per task. Target >= 1.7 (needs two idle cores).
``peak_mem_ratio_4x_domain``
    peak resident memory of a process streaming a 4x larger domain to Zarr / that of the base
    domain (same chunk and patch sizes), with the regression mean computed over the whole
    domain once per time (the default) and, as ``..._mean_patches``, patch by patch (memory
    bounded by a patch). Target <= 1.2. The increments over the memory held before the write
    starts (imports, model, data description) are reported too.
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
    """Stream the downscaled ``store`` to Zarr in this process and print memory figures."""
    import dask
    import torch

    from corrdiff_xr.config import PatchConfig
    from corrdiff_xr.data import open_pair
    from corrdiff_xr.inference import downscale
    from corrdiff_xr.inference.store import write_zarr

    torch.set_num_threads(1)
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
            # no bottleneck attention: with two levels its tokens would be a quarter of the
            # grid's pixels, quadratic memory over a whole 512 x 512 grid (24 GB)
            model = tiny_corrdiff(
                Codec.from_pair(pair), (size, size), channels=8, bottleneck_attention=False
            )
            ckpt = model.save(os.path.join(tmp, f"m{size}.safetensors"))
            for mean in ("whole", "patches"):
                res = subprocess.run(
                    [sys.executable, __file__, "--memory-child", store, str(ckpt), mean],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                figs[size, mean] = json.loads(res.stdout.strip().splitlines()[-1])
    out = {}
    for mean, suffix in (("whole", ""), ("patches", "_mean_patches")):
        b, big = figs[base, mean], figs[2 * base, mean]
        out |= {
            f"base_peak_mib{suffix}": b["peak_kib"] / 1024,
            f"4x_peak_mib{suffix}": big["peak_kib"] / 1024,
            f"peak_mem_ratio_4x_domain{suffix}": big["peak_kib"] / b["peak_kib"],
            f"base_increment_mib{suffix}": (b["peak_kib"] - b["before_kib"]) / 1024,
            f"4x_increment_mib{suffix}": (big["peak_kib"] - big["before_kib"]) / 1024,
        }
    out["setup"] = (
        f"{base}x{base} vs {2 * base}x{2 * base} domain from Zarr chunked 64x64, 64x64 patches "
        "(overlap 16) and output chunks, 2 times, streamed with write_zarr on the sync "
        "scheduler; regression mean over the whole domain (default) or per patch"
    )
    return out


SECTIONS = ("lazy_overhead", "scaling", "memory", "member_batching")


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
    args = parser.parse_args(argv)
    if args.memory_child:
        _memory_child(*args.memory_child)
        return 0
    load_before = os.getloadavg()
    sections = {
        "lazy_overhead": lambda: lazy_overhead(args.repeat),
        "scaling": lambda: scaling(args.repeat),
        "memory": lambda: memory(args.base),
        "member_batching": lambda: member_batching(
            args.repeat, steps=args.batching_steps, nt=args.batching_times
        ),
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
        key = "peak_mem_ratio_4x_domain_mean_patches"
        summary[key] = results["memory"][key]
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
