"""The GPU check: everything that needs CUDA, in one run that fits a short device lease.

On a machine with CUDA, :func:`main` runs, each step timed and its outcome recorded in the
JSON (``--json``, default ``benchmarks/results/gpu_check.json``):

1. ``cuda_tests``: the CUDA-only tests (``tests/test_cuda.py``; skipped without a GPU);
2. ``bf16_train``: a tiny regression run with bf16 autocast, its steps per second and loss;
3. ``sampling``: members per second of the shipped demo model on the GPU: ours at the
   reference's setting (Heun 18, 35 calls) and at the demo's sampler (DPM-Solver++(2M),
   7 calls), patched (32 x 32, shared noise) and whole-domain, 16 members per call; and
   PhysicsNeMo's own Heun-18 on the same weights beside them (``_reference_sampler.py``);
4. ``normal_rows``: the normal-size row of ``vs_physicsnemo.py`` (``_normal_row.py``: ~80 M
   parameter networks on a 448 x 448 patch, batch 8, forward and one Heun step, ours vs
   PhysicsNeMo's on the same weights) in fp32 and bf16 autocast, each with its TFLOP/s
   (``torch.utils.flop_counter`` FLOPs over time) and MFU against the GPU's dense peak
   (bf16, or TF32 for fp32: the data sheet's, see ``_normal_row.PEAK_TFLOPS``);
5. ``packages``: ``benchmarks/packages.py`` on the GPU (CorrDiff-Mini on 128 x 128, 8 members,
   Heun 6 steps, one repeat): members per second of ours vs Earth2Studio 0.19 on the same
   package, fp32 and bf16, with 8 members per call;
6. ``loader_taiwan``, ``loader_conus``: ``benchmarks/loader.py``'s real-size presets
   (:func:`loader.run_preset`, local Zarr) with fewer samples than its own runs
   (:data:`LOADER_SIZES`), each in a child process stopped at its share of the budget.

``--dry-run`` runs the same steps on the CPU with the smallest sizes (a check that the script
itself works, for CI and for machines without a GPU: the normal-size rows with the tests'
tiny networks on a 16 x 16 patch, MFU against the best ``torch.mm`` rate measured there; the loader
presets on 64 x 64 / 64 x 96 fine grids with 3 inputs and 2 targets) and writes
``benchmarks/results/gpu_check_dry_run.json`` unless ``--json`` says otherwise. The script
stops a step that runs past its share of ``--budget-s`` (default 420 s) and records it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cuda_tests(device: str, budget: float) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=budget)
    except subprocess.TimeoutExpired:
        return {"ok": False, "timed_out": True, "wall_s": budget}
    tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
    return {"ok": done.returncode in (0, 5) or "skipped" in tail[0], "returncode": done.returncode,
            "summary": tail[0], "wall_s": time.perf_counter() - t0}  # fmt: skip


def _bf16_train(device: str, dry: bool) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from _train_helpers import synthetic_store, tiny_config

    from corrdiff_xr.config import TrainRunConfig, from_dict
    from corrdiff_xr.training import train

    with tempfile.TemporaryDirectory() as tmp:
        store = synthetic_store(Path(tmp) / "d.zarr", n=16 if dry else 64, nt=8)
        steps = 2 if dry else 20
        cfg = tiny_config(store, Path(tmp) / "run", duration=4 * steps, device=device,
                          precision="bf16", deterministic=False, validate_every=10**6,
                          checkpoint_every=10**6, log_every=10**6)  # fmt: skip
        t0 = time.perf_counter()
        result = train(from_dict(TrainRunConfig, cfg))
        wall = time.perf_counter() - t0
    return {"ok": bool(result.completed), "loss": float(result.loss), "steps": steps,
            "steps_per_s": steps / wall, "wall_s": wall}  # fmt: skip


def _sampling(device: str, dry: bool) -> dict:
    import corrdiff_xr  # noqa: F401  (the accessor)
    from corrdiff_xr import demo

    pair = demo.open_demo_data(times=1 if dry else 8)
    data = pair.dataset.load()
    members = 2 if dry else 16
    out = {}
    settings = {"heun18": ("heun", 18, 800.0), "demo_sampler": (demo.DEMO_SOLVER,
                demo.DEMO_STEPS, demo.DEMO_SIGMA_MAX)}  # fmt: skip
    for label, (solver, steps, sigma_max) in settings.items():
        for patch in (None, 32):
            t0 = time.perf_counter()
            data.corrdiff.downscale(
                demo.shipped_model_path(), members=members, steps=1 if dry else steps,
                sampler={"solver": solver, "sigma_max": sigma_max}, patch=patch, device=device,
                batch_size=16,
            ).compute(scheduler="sync")  # fmt: skip
            wall = time.perf_counter() - t0
            key = f"{label}_{'patched' if patch else 'whole'}"
            out[key] = {"members_per_s": members * data.sizes["time"] / wall, "wall_s": wall}
    out["reference_heun18_whole"] = _reference_sampling(pair, members, device, dry)
    ref = out["reference_heun18_whole"]["members_per_s"]
    out["speedup_demo_sampler_vs_reference_heun18_whole"] = (
        out["demo_sampler_whole"]["members_per_s"] / ref
    )
    out["speedup_heun18_vs_reference_heun18_whole"] = out["heun18_whole"]["members_per_s"] / ref
    return {"ok": True, **out}


def _reference_sampling(pair, members: int, device: str, dry: bool) -> dict:
    """PhysicsNeMo's Heun-18 on the shipped weights, all members per call, on ``device``."""
    from _reference_sampler import reference_ensemble

    from corrdiff_xr import demo
    from corrdiff_xr.config import SamplerConfig
    from corrdiff_xr.model import CorrDiff

    model = CorrDiff.load(demo.shipped_model_path()).eval()
    sampler = SamplerConfig(solver="heun", num_steps=2 if dry else 18, sigma_max=800.0)
    kw = {"sampler": sampler, "seed_batch": members, "device": device}
    reference_ensemble(model, pair.isel(time=slice(0, 1)), members=members, **kw)  # warm-up
    _, wall = reference_ensemble(model, pair, members=members, **kw)
    return {"members_per_s": members * pair.dataset.sizes["time"] / wall, "wall_s": wall}


#: loader presets in the check: (time steps, chunk, batch); --dry-run also shrinks the grids
LOADER_SIZES = {"taiwan": (16, 8, 8), "conus": (8, 8, 8)}
LOADER_TINY = {"taiwan": {"fine": (64, 64), "inputs": 3, "targets": 2},
               "conus": {"fine": (64, 96), "patch": (32, 32), "inputs": 3, "targets": 2}}  # fmt: skip


def _normal_rows(device: str, dry: bool) -> dict:
    """fp32 and bf16 rows of the normal-size networks, ours vs PhysicsNeMo's, with MFU."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _normal_row import normal_rows

    size = dict(size=16, preset="tiny", cin=3, cout=2, batch=2, repeats=1) if dry else dict(
        size=448, preset="normal", cin=12, cout=4, batch=8, repeats=3)  # fmt: skip
    rows = normal_rows(device=device, warmup=True, precisions=("fp32", "bf16"), **size)
    ok = all(f"{c}_ours_mfu" in r for r in rows.values() for c in ("forward", "heun_step"))
    return {"ok": ok, **rows}


def _packages(device: str, dry: bool) -> dict:
    """``packages.py`` on ``device``: ours vs Earth2Studio on one package, fp32 and bf16."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import packages

    argv = ["--device", device, "--repeat", "1"] + (
        ["--quick", "--members", "2"] if dry else ["--batch", "8"]
    )
    args = packages.parse(argv)
    out = packages.run(args)
    keys = ("members_per_s_vs_earth2studio", "members_per_s_bf16_vs_earth2studio_bf16")
    return {"ok": all(out[k] > 0 for k in keys), **out}


def _loader_preset(name: str, dry: bool, budget: float) -> dict:
    """``loader.run_preset(name)`` in a child process, stopped after ``budget`` seconds."""
    cmd = [sys.executable, __file__, "--preset-child", name] + (["--dry-run"] if dry else [])
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=budget)
    except subprocess.TimeoutExpired:
        return {"ok": False, "timed_out": True, "wall_s": budget}
    if done.returncode:
        return {"ok": False, "error": done.stderr.strip()[-1000:]}
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return {"ok": out.get("raw_zarr_samples_per_s", 0) > 0, **out,
            "wall_s": time.perf_counter() - t0}  # fmt: skip


def _preset_child(name: str, dry: bool) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import loader

    if dry:  # the preset's shape of work at a size that runs in seconds, one torch thread
        import torch

        torch.set_num_threads(1)
        loader.PRESETS[name] = {**loader.PRESETS[name], **LOADER_TINY[name]}
    nt, chunk, batch = LOADER_SIZES[name]
    sizes = argparse.Namespace(nt=nt, chunk=chunk, batch=batch, repeats=1)
    print(json.dumps(loader.run_preset(name, sizes) | {"sizes": vars(sizes), "dry_run": dry}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, smallest sizes")
    parser.add_argument("--json", help="where to write the results")
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--preset-child", choices=sorted(LOADER_SIZES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.preset_child:
        _preset_child(args.preset_child, args.dry_run)
        return 0
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; use --dry-run to check the script on the CPU")
        return 2
    device = "cpu" if args.dry_run else "cuda"
    if args.dry_run:  # one thread: two spin-waiting threads crawl on a shared, loaded CPU
        torch.set_num_threads(1)
    name = "gpu_check_dry_run.json" if args.dry_run else "gpu_check.json"
    path = Path(args.json) if args.json else ROOT / "benchmarks" / "results" / name
    result: dict = {"dry_run": args.dry_run, "device": device, "load_avg": os.getloadavg()}
    if device == "cuda":
        result["gpu"] = torch.cuda.get_device_name(0)
    start = time.perf_counter()

    def left(share: float) -> float:  # that share of the budget still left, at least 10 s
        return max(10.0, share * (args.budget_s - (time.perf_counter() - start)))

    steps = {
        "cuda_tests": lambda: _cuda_tests(device, args.budget_s / 3),
        "bf16_train": lambda: _bf16_train(device, args.dry_run),
        "sampling": lambda: _sampling(device, args.dry_run),
        "normal_rows": lambda: _normal_rows(device, args.dry_run),
        "packages": lambda: _packages(device, args.dry_run),
        "loader_taiwan": lambda: _loader_preset("taiwan", args.dry_run, left(0.5)),
        "loader_conus": lambda: _loader_preset("conus", args.dry_run, left(1.0)),
    }
    for label, step in steps.items():
        if time.perf_counter() - start > args.budget_s:
            result[label] = {"ok": False, "skipped": "over the time budget"}
            continue
        try:
            result[label] = step()
        except Exception as err:  # noqa: BLE001 - record and go on: the lease is short
            result[label] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        print(label, json.dumps(result[label]), flush=True)
    result["wall_s"] = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0 if all(result[k].get("ok") for k in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
