"""Reproduce the shipped tiny CorrDiff (``corrdiff_xr/weights/tiny_demo.safetensors``).

The recipe uses only public pieces of corrdiff_xr:

1. materialise the demo catalog entry (``catalogs/demo.yaml``, entry ``demo``, 64 x 64 fine
   grid, ``nt`` hourly steps) into a local Zarr cache;
2. ``corrdiff-xr train --config corrdiff_xr/configs/tiny_regression.yaml`` (the mean U-Net),
   then ``corrdiff-xr train --config corrdiff_xr/configs/tiny_diffusion.yaml`` (the residual
   EDM model on top of the frozen regression checkpoint), both on the first 20 days;
3. store the final model with fp16 tensors (``CorrDiff.load`` copies them into fp32
   parameters), which halves the file;
4. score it on the held-out last days (never seen in training) with the same evaluation the
   ``demo`` command runs, and write the scores as JSON.

Usage::

    python benchmarks/train_shipped_model.py --work WORKDIR [--json scores.json]
        [--install]   # copy the result over corrdiff_xr/weights/tiny_demo.safetensors

Training runs with one intra-op thread (``--threads``): on a small shared CPU, more threads
than free cores makes every step slower.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "corrdiff_xr" / "configs"
#: hourly steps in the store: 20 days of training followed by the held-out days
NT = 552


def materialise(cache_dir: Path, *, nt: int = NT) -> Path:
    """Build (once) the demo catalog entry in ``cache_dir``; return its Zarr store."""
    from corrdiff_xr.data.catalog import open_entry

    open_entry("demo", "demo", cache_dir=str(cache_dir), nt=nt)
    stores = sorted(cache_dir.glob("demo-*.zarr"))
    if len(stores) != 1:
        raise RuntimeError(f"expected one demo store in {cache_dir}, found {stores}")
    return stores[0]


def train_stage(config: Path, overrides: list[str], *, threads: int) -> float:
    """Run ``corrdiff-xr train`` in a subprocess; return its wall time in seconds."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "corrdiff_xr.cli", "train", "--config", str(config), *overrides]
    print("+", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=REPO)
    return time.perf_counter() - start


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file: which weights a result was measured with."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_half(model_file: Path, target: Path) -> Path:
    """Copy a checkpoint with its floating tensors cast to fp16 (same header), atomically."""
    from safetensors import safe_open
    from safetensors.torch import save

    with safe_open(str(model_file), framework="pt", device="cpu") as f:
        meta = f.metadata()
        names = f.keys()
        tensors = {k: f.get_tensor(k) for k in names}
    tensors = {k: (t.half() if t.is_floating_point() else t) for k, t in tensors.items()}
    from corrdiff_xr._atomic import write_bytes

    blob = save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta)
    return write_bytes(target, blob)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work", type=Path, required=True, help="work directory (data cache, runs)"
    )
    parser.add_argument("--json", type=Path, help="write timings and held-out scores here")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for training")
    parser.add_argument(
        "--install",
        action="store_true",
        help="copy the result to corrdiff_xr/weights/tiny_demo.safetensors",
    )
    parser.add_argument(
        "--skip-regression", action="store_true", help="reuse WORK/regression/model.safetensors"
    )
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="skip training; score WORK/tiny_demo.safetensors",
    )
    parser.add_argument("--members", type=int, default=8, help="held-out ensemble size")
    parser.add_argument("--times", type=int, default=12, help="held-out hours scored")
    parser.add_argument(
        "--steps", type=int, default=None, help="sampler steps (default: the demo's)"
    )
    args = parser.parse_args(argv)

    work = args.work.resolve()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    materialise(work / "cache")
    timings["materialise_s"] = time.perf_counter() - start
    common = [f"data.catalog_params.cache_dir={work / 'cache'}"]
    reg_dir = work / "regression"
    diff_dir = work / "diffusion"
    shipped = work / "tiny_demo.safetensors"
    if args.evaluate_only:
        return evaluate_and_report(args, shipped, timings)
    if not args.skip_regression:
        timings["regression_s"] = train_stage(
            CONFIGS / "tiny_regression.yaml",
            [*common, f"training.output_dir={reg_dir}"],
            threads=args.threads,
        )
    timings["diffusion_s"] = train_stage(
        CONFIGS / "tiny_diffusion.yaml",
        [
            *common,
            f"training.output_dir={diff_dir}",
            f"training.regression_checkpoint={reg_dir / 'model.safetensors'}",
        ],
        threads=args.threads,
    )
    save_half(diff_dir / "model.safetensors", shipped)
    timings["total_train_s"] = sum(v for k, v in timings.items())
    print(json.dumps(timings, indent=2))
    return evaluate_and_report(args, shipped, timings)


def evaluate_and_report(args: argparse.Namespace, shipped: Path, timings: dict) -> int:
    """Score ``shipped`` on held-out hours (the demo's evaluation); write JSON; install."""
    from corrdiff_xr import demo

    start = time.perf_counter()
    pair = demo.open_demo_data(cache_dir=args.work.resolve() / "cache", times=args.times)
    steps = args.steps or demo.DEMO_STEPS
    result = demo.evaluate(
        pair,
        shipped,
        members=args.members,
        steps=steps,
        sampler={"solver": demo.DEMO_SOLVER, "sigma_max": demo.DEMO_SIGMA_MAX},
        progress=True,
    )
    timings["evaluate_s"] = time.perf_counter() - start
    print(demo.format_table(result.scores))
    report = {
        "timings": timings,
        "scores": result.scores,
        "model_bytes": shipped.stat().st_size,
        "members": args.members,
        "held_out_hours": args.times,
        "sampler_steps": steps,
        "sigma_max": demo.DEMO_SIGMA_MAX,
        "held_out_start": demo.HELD_OUT_START,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    if args.install:
        target = REPO / "corrdiff_xr" / "weights" / "tiny_demo.safetensors"
        save_half(shipped, target)
        print(f"installed {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
