"""Cost curves of ``downscale(...).to_zarr`` on the CPU: time and peak memory against the
domain, the ensemble size, the number of Dask workers and the network size, in one run.

Every point runs in a fresh process (``--point``) so that its peak resident memory (VmHWM,
as ``lazy_downscale.py`` measures it) is its own. The process opens a synthetic canonical
Zarr store written beforehand (inputs and fine grid chunked like the output), loads the
checkpoint into the worker model cache (the block tasks' own cache: that load is not
timed), then times ``downscale(pair, checkpoint, ...).to_zarr(...)`` end to end: the graph,
the reads, the whole-domain regression mean (tiled on large domains), the sampler (one
Euler step), the fusion of the patches and the write. Four axes:

``domain``
    fine grids of 64^2 ... 1024^2 (``--sides``), tiny network, 1 member, 64 x 64 patches
    (overlap 16), output chunks of 256 x 256, sync scheduler;
``members``
    1 ... 64 members (``--members``) of a 128^2 domain, otherwise as ``domain`` (member
    groups of 8, one group per output chunk);
``workers``
    a ``distributed.LocalCluster`` of 1 and 2 worker processes, one thread each, on a 256^2
    domain, 8 members, output chunks of 128 x 128 (4 blocks);
``network``
    the ``tiny``, ``mini`` and ``normal`` (~80 M parameters per network) CorrDiff networks on
    one patch: ``forward`` times one residual-denoiser call on it (batch 1), ``sample`` the
    whole ``to_zarr`` of a domain that is that one patch (regression mean + one Euler step).
    A 448 x 448 normal-size forward takes 30-60 s on one core of this box, so the run times a
    normal forward at ``--probe`` pixels, extrapolates by pixels and takes the largest patch
    of :data:`PATCHES` whose three normal-size forwards fit ``--network-budget-s``
    (``network.patch_*`` record the probe, the estimates and the choice).

Torch runs one thread per task everywhere (a per-core cost), so the figures are what one
core of a worker pays. Exponents are least-squares slopes in log-log space over all the
points of an axis (time and peak-memory increment over the memory held before the write,
against pixels, members, or the forward's FLOPs), and ``*_upper`` over its three largest
points (axes of four or more), where fixed costs no longer hide the growth; any above 1.1 is
flagged. The load average, cores and torch threads are recorded: the box is shared, so treat
single times with care and look at the slopes.

Usage::

    python benchmarks/scaling.py --json benchmarks/results/scaling.json
    python benchmarks/scaling.py --tiny --json scaling_tiny.json   # seconds: the test's run
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
from pathlib import Path

import numpy as np

#: patch sides the network axis may take, largest first (multiples of 16: five levels)
PATCHES = (448, 224, 112)
#: what flags an exponent
LIMIT = 1.1
#: the ``*_upper`` exponents fit this many largest points (axes of more points only)
UPPER = 3
PATCH, OVERLAP, CHUNK = 64, 16, 256


def _peak_rss_kib() -> int:
    """Peak resident memory of this process image (VmHWM; see lazy_downscale.py)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("VmHWM not found in /proc/self/status")


def fit_exponent(x: list[float], y: list[float]) -> float:
    """Least-squares slope of log(y) against log(x): ``y ~ x ** slope``."""
    if len(x) < 2 or min(x) <= 0 or min(y) <= 0:
        raise ValueError(f"an exponent needs two or more positive points, got {x} -> {y}")
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


# ---------------------------------------------------------------------------- the points
def _forward_s(model, patch: int, repeats: int = 1) -> float:
    """Best time of one residual-denoiser call on a (1, C, patch, patch) input, no grad."""
    import torch

    g = torch.Generator().manual_seed(0)
    y = torch.randn(1, model.out_channels, patch, patch, generator=g)
    cond = torch.randn(1, model.out_channels + model.in_channels, patch, patch, generator=g)
    sigma = torch.full((1,), 1.3)
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.residual(y, sigma, condition=cond)
            best = min(best, time.perf_counter() - t0)
    return best


def _point(spec: dict) -> dict:
    """One measured point, in this (fresh) process: see the module docstring."""
    import dask
    import torch

    import corrdiff_xr  # noqa: F401  (the accessor)
    from corrdiff_xr.data import open_pair
    from corrdiff_xr.inference import downscale
    from corrdiff_xr.inference.cache import load_model, token_for

    torch.set_num_threads(1)
    pair = open_pair(spec["store"])
    ckpt = spec["checkpoint"]
    model = load_model(token_for(ckpt))  # the block tasks find it cached
    out: dict = {}
    if spec.get("forward_patch"):
        out["forward_s"] = _forward_s(model, spec["forward_patch"], spec.get("repeats", 1))
    # the forward above warmed the network axis's operators: no warm-up sample there
    _warm_up(model, spec["patch"] or min(model.img_shape), sample=not spec.get("forward_patch"))
    patch = {"patch": spec["patch"], "overlap": spec["overlap"]} if spec["patch"] else {}
    ds = downscale(pair, ckpt, members=spec["members"], sampler={"solver": "euler",
                   "num_steps": 1}, threads=1, chunks=spec["chunks"], **patch)  # fmt: skip
    workers = spec.get("workers", 0)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "out.zarr")
        if not workers:
            before = _peak_rss_kib()
            t0 = time.perf_counter()
            with dask.config.set(scheduler="sync"):
                ds.to_zarr(path, consolidated=False)
            out["to_zarr_s"] = time.perf_counter() - t0
            out |= {"before_mib": before / 1024, "peak_mib": _peak_rss_kib() / 1024}
        else:
            out |= _on_cluster(ds, path, ckpt, workers, spec["patch"] or min(model.img_shape))
    out["increment_mib"] = out["peak_mib"] - out["before_mib"]
    out["blocks"] = int(np.prod([len(c) for c in ds[list(ds.data_vars)[0]].chunks]))
    return out


def _warm_up(model, side: int, *, sample: bool = True) -> None:
    """First calls outside the timing: the networks' operators at the patch's shape (oneDNN
    primitives, allocator) and a Zarr write (lazy imports, codecs)."""
    import torch
    import xarray as xr

    from corrdiff_xr.config import SamplerConfig

    if sample:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, model.in_channels, side, side, generator=g)
        euler = SamplerConfig(solver="euler", num_steps=1)
        at = torch.zeros(1, 2, dtype=torch.long)  # a patch at the grid's origin
        model.sample(x, generators=[torch.Generator().manual_seed(1)], sampler=euler, offsets=at)
    with tempfile.TemporaryDirectory() as tmp:
        xr.Dataset({"a": ("x", np.zeros(4))}).chunk().to_zarr(f"{tmp}/w.zarr", consolidated=False)


def _on_cluster(ds, path: str, ckpt: str, workers: int, side: int) -> dict:
    """``to_zarr`` on a LocalCluster of ``workers`` single-threaded processes; the peaks are
    the largest worker's (the client process holds only the graph)."""
    from distributed import Client, LocalCluster

    from corrdiff_xr.inference.cache import load_model, token_for

    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                     host="127.0.0.1", dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        client.wait_for_workers(workers)
        client.run(lambda: _warm_up(load_model(token_for(ckpt)), side))  # every worker
        before = max(client.run(_peak_rss_kib).values())
        t0 = time.perf_counter()
        ds.to_zarr(path, consolidated=False)
        wall = time.perf_counter() - t0
        peak = max(client.run(_peak_rss_kib).values())
    return {"to_zarr_s": wall, "before_mib": before / 1024, "peak_mib": peak / 1024}


def _run_point(spec: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--point", json.dumps(spec)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"scaling point {spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- the setup
def _store(tmp: str, side: int, *, chunk: int) -> str:
    """A synthetic canonical Zarr store of one time step, chunked like the output."""
    from corrdiff_xr.data import synthetic_dataset

    path = os.path.join(tmp, f"in{side}.zarr")
    if not os.path.exists(path):
        c = min(chunk, side)
        chunks = {"time": 1, "y": c, "x": c, "y_coarse": c // 4, "x_coarse": c // 4}
        data = synthetic_dataset(ny=side, nx=side, nt=1, factor=4, seed=0)
        data.chunk(chunks).to_zarr(path, consolidated=False)
    return path


def _network(name: str):
    """The regression and residual NetworkConfigs of ``tiny``, ``mini`` or ``normal``."""
    import dataclasses

    from corrdiff_xr.config import NetworkConfig
    from corrdiff_xr.testing import TINY_NETWORK

    # tiny: no bottleneck attention (the tiled mean's 256^2 windows would make 16k tokens)
    res = (dataclasses.replace(TINY_NETWORK, bottleneck_attention=False) if name == "tiny"
           else NetworkConfig.preset(name))  # fmt: skip
    return dataclasses.replace(res, embedding_type="zero"), res


def _model(store: str, side: int, name: str):
    """A CorrDiff of network ``name`` for a ``side``^2 domain (random weights, seeded)."""
    import torch

    from corrdiff_xr.codec import Codec
    from corrdiff_xr.data import open_pair
    from corrdiff_xr.model import CorrDiff

    reg, res = _network(name)
    torch.manual_seed(0)
    return CorrDiff(Codec.from_pair(open_pair(store)), img_shape=(side, side),
                    regression_network=reg, residual_network=res)  # fmt: skip


def _checkpoint(tmp: str, store: str, side: int, name: str) -> tuple[str, float]:
    """:func:`_model` saved: its path and millions of parameters."""
    model = _model(store, side, name)
    path = str(model.save(os.path.join(tmp, f"{name}{side}.safetensors")))
    return path, sum(p.numel() for p in model.parameters()) / 1e6


def _forward_gflop(codec, name: str, patch: int) -> float:
    """GFLOPs of one residual-denoiser call at (1, C, patch, patch), counted with
    ``torch.utils.flop_counter`` on the meta device (shapes only, nothing computed)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from corrdiff_xr.model import CorrDiff

    reg, res = _network(name)
    with torch.device("meta"), torch.no_grad():
        model = CorrDiff(codec, img_shape=(patch, patch), regression_network=reg,
                         residual_network=res)  # fmt: skip
        y = torch.zeros(1, model.out_channels, patch, patch)
        cond = torch.zeros(1, model.out_channels + model.in_channels, patch, patch)
        with FlopCounterMode(display=False) as count:
            model.residual(y, torch.full((1,), 1.3), condition=cond)
    return count.get_total_flops() / 1e9


# ---------------------------------------------------------------------------- the axes
def _axis(points: list[dict], x: str, label: str) -> dict:
    """An axis's points, flat figures per point (for the docs table) and its exponents."""
    out: dict = {"points": points}
    for p in points:
        out[f"{label}_{p[label]}_s"] = p["to_zarr_s"]
        out[f"{label}_{p[label]}_peak_mib"] = p["peak_mib"]
    # the increment can be ~0 (bounded memory): a floor of 1 MiB keeps the log finite
    ys = {"time": [p["to_zarr_s"] for p in points],
          "peak_increment": [max(p["increment_mib"], 1.0) for p in points]}  # fmt: skip
    xs = [p[x] for p in points]
    for name, y in ys.items():
        if len(points) > 1:
            out[f"exponent_{name}"] = fit_exponent(xs, y)
        if len(points) > UPPER:  # where fixed costs no longer hide the growth
            out[f"exponent_{name}_upper"] = fit_exponent(xs[-UPPER:], y[-UPPER:])
    return out


def domain_axis(tmp: str, args) -> dict:
    """Time and peak memory against the fine grid's pixels (tiny network, 1 member)."""
    points = []
    for side in args.sides:
        store = _store(tmp, side, chunk=args.chunk)
        ckpt = _checkpoint(tmp, store, side, "tiny")[0]
        c = min(args.chunk, side)
        spec = {"store": store, "checkpoint": ckpt, "members": 1, "patch": min(args.patch, side),
                "overlap": args.overlap, "chunks": {"time": 1, "y": c, "x": c}}  # fmt: skip
        points.append({"side": side, "pixels": side * side, **_run_point(spec)})
        print(f"domain {side}^2: {points[-1]}", flush=True)
    return _axis(points, "pixels", "side")


def members_axis(tmp: str, args) -> dict:
    """Time and peak memory against the ensemble size (tiny network)."""
    side = args.members_side
    store = _store(tmp, side, chunk=args.chunk)
    ckpt = _checkpoint(tmp, store, side, "tiny")[0]
    points = []
    for m in args.members:
        c = min(args.chunk, side)
        spec = {"store": store, "checkpoint": ckpt, "members": m, "patch": min(args.patch, side),
                "overlap": args.overlap, "chunks": {"time": 1, "y": c, "x": c}}  # fmt: skip
        points.append({"members": m, **_run_point(spec)})
        print(f"members {m}: {points[-1]}", flush=True)
    return _axis(points, "members", "members")


def workers_axis(tmp: str, args) -> dict:
    """``to_zarr`` on LocalClusters of 1 and 2 single-threaded workers."""
    side = args.workers_side
    c = side // 2  # four output blocks
    store = _store(tmp, side, chunk=c)
    ckpt = _checkpoint(tmp, store, side, "tiny")[0]
    points = []
    for w in args.workers:
        spec = {"store": store, "checkpoint": ckpt, "members": 8, "patch": min(args.patch, c),
                "overlap": args.overlap, "chunks": {"time": 1, "y": c, "x": c}, "workers": w}  # fmt: skip
        points.append({"workers": w, **_run_point(spec)})
        print(f"workers {w}: {points[-1]}", flush=True)
    out: dict = {"points": points}
    for p in points:
        out[f"workers_{p['workers']}_s"] = p["to_zarr_s"]
        out[f"workers_{p['workers']}_worker_peak_mib"] = p["peak_mib"]
    if len(points) > 1:
        out["speedup"] = points[0]["to_zarr_s"] / points[-1]["to_zarr_s"]
        out["efficiency"] = out["speedup"] * points[0]["workers"] / points[-1]["workers"]
    return out


def choose_patch(tmp: str, probe: int, budget_s: float) -> dict:
    """Time one normal-size forward at ``probe``^2 here (one thread) and pick the largest of
    :data:`PATCHES` whose three forwards (one timed, two in the 1-step sample) fit."""
    import torch

    torch.set_num_threads(1)
    store = _store(tmp, probe, chunk=probe)
    model = _model(store, probe, "normal")
    t = _forward_s(model, probe)
    estimate = {p: 3 * t * (p / probe) ** 2 for p in PATCHES}
    fits = [p for p in PATCHES if estimate[p] <= budget_s]
    patch = fits[0] if fits else min(PATCHES)
    return {"patch": patch, "patch_probe_side": probe, "patch_probe_forward_s": t,
            "patch_budget_s": budget_s,
            **{f"patch_estimate_s_{p}": e for p, e in estimate.items()},
            "patch_choice": f"largest of {list(PATCHES)} whose three normal-size forwards "
            f"(estimated from one {probe}^2 forward by pixels) fit {budget_s:.0f} s"}  # fmt: skip


def network_axis(tmp: str, args) -> dict:
    """Forward and 1-step sample of one patch against the network's size."""
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.data import open_pair

    out: dict = {}
    patch = args.network_patch
    if patch is None:
        out |= choose_patch(tmp, args.probe, args.network_budget_s)
        patch = out["patch"]
    out["patch"] = patch
    store = _store(tmp, patch, chunk=patch)
    codec = Codec.from_pair(open_pair(store))
    points = []
    for name in args.networks:
        ckpt, params = _checkpoint(tmp, store, patch, name)
        spec = {"store": store, "checkpoint": ckpt, "members": 1, "patch": None,
                "overlap": 0, "chunks": {"time": 1}, "forward_patch": patch}  # fmt: skip
        gflop = _forward_gflop(codec, name, patch)
        point = {"network": name, "parameters_millions": params, "forward_gflop": gflop}
        point |= _run_point(spec)
        point["forward_gflop_per_s"] = gflop / point["forward_s"]
        points.append(point)
        print(f"network {name}: {point}", flush=True)
        if os.path.isfile(ckpt):  # the normal-size one is ~0.6 GB
            os.remove(ckpt)
    out["points"] = points
    for p in points:
        for key in ("forward_s", "to_zarr_s", "peak_mib", "parameters_millions"):
            out[f"{p['network']}_{key}"] = p[key]
    if len(points) > 1:
        g = [p["forward_gflop"] for p in points]
        out["exponent_forward_vs_gflop"] = fit_exponent(g, [p["forward_s"] for p in points])
        out["exponent_sample_vs_gflop"] = fit_exponent(g, [p["to_zarr_s"] for p in points])
    return out


# ---------------------------------------------------------------------------- the run
AXES = {"domain": domain_axis, "members": members_axis, "workers": workers_axis,
        "network": network_axis}  # fmt: skip
#: --tiny: the same code path at sizes that run in seconds (the test's)
TINY = {"sides": [32, 64], "members": [1, 2], "members_side": 32, "workers_side": 64,
        "patch": 32, "overlap": 8, "chunk": 32, "networks": ["tiny", "mini"],
        "network_patch": 32}  # fmt: skip


def summary(results: dict) -> dict:
    """Every fitted exponent as ``axis.name`` and those above :data:`LIMIT`."""
    exps = {f"{axis}.{k}": v for axis, r in results.items() for k, v in r.items()
            if k.startswith("exponent_")}  # fmt: skip
    flagged = sorted(k for k, v in exps.items() if v > LIMIT)
    return {"exponents": exps, "flagged_above_1.1": ", ".join(flagged) or "none",
            "flagged_count": len(flagged)}  # fmt: skip


def run(args) -> dict:
    import torch

    load_start, t0 = os.getloadavg(), time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for axis in args.axes:
            start = time.perf_counter()
            results[axis] = AXES[axis](tmp, args)
            results[axis]["wall_s"] = time.perf_counter() - start
    out = summary(results) | results
    out["machine"] = {"cores": os.cpu_count(), "torch_threads_per_task": 1,
                      "torch": torch.__version__, "python": platform.python_version(),
                      "load_average_start": list(load_start),
                      "load_average_end": list(os.getloadavg())}  # fmt: skip
    out["wall_s"] = time.perf_counter() - t0
    out["settings"] = {k: v for k, v in vars(args).items() if k not in ("json", "point")}
    out["note"] = (
        "Each point a fresh process, peak = VmHWM; time = downscale(...).to_zarr end to end "
        "with one Euler step, torch one thread per task; exponents are log-log least-squares "
        "slopes over an axis's points (memory: the peak's increment over what the process held "
        "before the write, floored at 1 MiB); workers: LocalCluster processes, 1 thread each."
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--tiny", action="store_true", help="seconds-long sizes (the test's)")
    p.add_argument("--axes", nargs="+", choices=sorted(AXES), default=list(AXES))
    p.add_argument("--sides", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    p.add_argument("--members", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--members-side", type=int, default=128)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--workers-side", type=int, default=256)
    p.add_argument("--patch", type=int, default=PATCH)
    p.add_argument("--overlap", type=int, default=OVERLAP)
    p.add_argument("--chunk", type=int, default=CHUNK)
    p.add_argument("--networks", nargs="+", default=["tiny", "mini", "normal"])
    p.add_argument("--network-patch", type=int, help="fixed patch (default: probe and choose)")
    p.add_argument("--probe", type=int, default=112, help="side of the normal-size probe")
    p.add_argument("--network-budget-s", type=float, default=150.0)
    p.add_argument("--point", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.point:
        print(json.dumps(_point(json.loads(args.point))))
        return 0
    if args.tiny:
        for key, value in TINY.items():
            setattr(args, key, value)
    out = run(args)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
