"""The shipped tiny CorrDiff on a real-size grid: NDFD's 688 x 1072 CONUS window, on the CPU.

Issue 24 item 6: there, the tiny regression net put global self-attention at its 172 x 268
bottleneck (46 k tokens, an 8.5 GB score matrix): 48 samples in 10 minutes at 13.7 GB RSS,
and whole-domain scores came out NaN. Now attention runs on the fused kernel (memory linear
in the tokens) and is left out beyond :data:`~corrdiff_xr.nn.attention.MAX_ATTENTION_TOKENS`
(see :mod:`corrdiff_xr.nn.attention`). This benchmark, on a synthetic dataset of that grid
(:func:`corrdiff_xr.data.sources.synthetic.synthetic_dataset`):

1. trains ``tiny_regression.yaml`` a few steps: samples/s and peak RSS (``VmHWM``);
2. trains ``tiny_diffusion.yaml`` a step over that mean, then samples one member over the
   whole domain with a few sampler steps and counts non-finite values.

Usage::

    python benchmarks/real_grid.py --json     # a row of benchmarks/results/real_grid.json
    python benchmarks/real_grid.py --json --precision bf16
    python benchmarks/real_grid.py --json --checkpoint-activations   # row fp32_checkpointed

``--checkpoint-activations`` sets ``network.checkpoint_activations=true`` for both stages: each
U-Net block is recomputed in the backward pass instead of keeping its activations, which is
what brings fp32 training of this grid under the limit (the plain rows keep measuring the
default).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "corrdiff_xr" / "configs"
RESULT = REPO / "benchmarks" / "results" / "real_grid.json"
GRID = (688, 1072)  # NDFD CONUS window (y, x) at 2.5 km
RSS_LIMIT_GB = 4.0  # the target of issue 24 item 6


def _peak_rss_gb() -> float:
    """This process's peak resident set (``VmHWM``) in GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    return math.nan


def _train(config: str, overrides: list[str], steps: int) -> dict:
    from corrdiff_xr.training.loop import train
    from corrdiff_xr.training.runconfig import load_run_config

    cfg = load_run_config(CONFIGS / config, overrides)
    start = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - start
    return {
        "steps": result.steps,
        "samples": result.nimg,
        "seconds": round(seconds, 1),
        "samples_per_s": round(result.nimg / seconds, 3),
        "final_loss": result.loss,
        "bottleneck_attention": _has_bottleneck_attention(result.output_dir),
        "peak_rss_gb_so_far": round(_peak_rss_gb(), 3),
    }


def _has_bottleneck_attention(out: Path) -> bool:
    from corrdiff_xr.model import CorrDiff

    model = CorrDiff.load(out / "model.safetensors")
    nets = [model.regression.net] + ([model.residual.net] if model.residual is not None else [])
    return any(net.dec[f"L{net.levels - 1}_in0"].attn is not None for net in nets)


def _sample(source: Path, model: Path, sampler_steps: int) -> dict:
    import numpy as np

    from corrdiff_xr.data import open_source

    ds = open_source(str(source)).dataset.isel(time=[0])
    start = time.perf_counter()
    ens = ds.corrdiff.downscale(str(model), members=1, steps=sampler_steps, seed=0).compute()
    seconds = time.perf_counter() - start
    values = {name: ens[name].values for name in ens.data_vars}
    return {
        "members": 1,
        "sampler_steps": sampler_steps,
        "seconds": round(seconds, 1),
        "shape": list(next(iter(values.values())).shape),
        "nonfinite": {name: int((~np.isfinite(v)).sum()) for name, v in values.items()},
    }


def run(
    work: Path,
    *,
    steps: int,
    sampler_steps: int,
    per_device: int,
    precision: str,
    checkpointed: bool = False,
) -> dict:
    """Generate the data, train both stages, sample; the report row."""
    import torch

    source = work / "ndfd_synthetic.zarr"
    # generated in a child process, so that VmHWM here is training's (and sampling's) peak
    code = (
        f"from corrdiff_xr.data.sources.synthetic import synthetic_dataset as s; "
        f"s(ny={GRID[0]}, nx={GRID[1]}, nt=8, factor=4, seed=0).to_zarr({str(source)!r}, mode='w')"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    batch = 4  # tiny_regression.yaml's total_batch_size
    common = [f"data.source={source}", "data.catalog_params={}", "training.progress=false",
              f"training.duration={steps * batch}", f"training.checkpoint_every={steps * batch}",
              "training.log_every=100000", f"training.batch_size_per_device={per_device}",
              f"training.precision={precision}",
              f"network.checkpoint_activations={str(checkpointed).lower()}"]  # fmt: skip
    reg, diff = work / "regression", work / "diffusion"
    regression = _train("tiny_regression.yaml", [*common, f"training.output_dir={reg}"], steps)
    regression["peak_rss_gb"] = regression.pop("peak_rss_gb_so_far")
    diffusion = _train(
        "tiny_diffusion.yaml",
        [*common, f"training.output_dir={diff}", f"training.duration={batch}",
         f"training.regression_checkpoint={reg / 'model.safetensors'}"],
        1,
    )  # fmt: skip
    sampling = _sample(source, diff / "model.safetensors", sampler_steps)
    return {
        "grid": list(GRID),
        "total_batch_size": batch,
        # activations of a 688 x 1072 image dominate: a batch of 4 at once passed 9.7 GB RSS;
        # checkpointing keeps only each block's input (network.checkpoint_activations)
        "batch_size_per_device": per_device,
        "precision": precision,
        "checkpoint_activations": checkpointed,
        "regression": regression,
        "diffusion": diffusion,
        "whole_domain_sampling": sampling,
        "peak_rss_gb": round(_peak_rss_gb(), 3),
        "rss_limit_gb": RSS_LIMIT_GB,
        "regression_under_limit": regression["peak_rss_gb"] < RSS_LIMIT_GB,
        "all_finite": not any(sampling["nonfinite"].values()),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="regression steps (default 2)")
    parser.add_argument(
        "--per-device", type=int, default=1, help="images per forward pass (default 1; 4 = all)"
    )
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument(
        "--checkpoint-activations",
        action="store_true",
        help="recompute U-Net blocks in the backward pass (network.checkpoint_activations)",
    )
    parser.add_argument("--sampler-steps", type=int, default=4, help="sampler steps (default 4)")
    parser.add_argument("--json", action="store_true", help=f"write {RESULT.relative_to(REPO)}")
    args = parser.parse_args(argv)
    load = list(os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        report = run(
            Path(tmp),
            steps=args.steps,
            sampler_steps=args.sampler_steps,
            per_device=args.per_device,
            precision=args.precision,
            checkpointed=args.checkpoint_activations,
        )
    report["load_average_before"] = load
    report["load_average_after"] = list(os.getloadavg())
    print(json.dumps(report, indent=2))
    if args.json:  # one row per setting, each measured in a process of its own (VmHWM)
        rows = json.loads(RESULT.read_text()) if RESULT.exists() else {}
        key = f"_per_device{args.per_device}"
        if args.checkpoint_activations:
            key = "_checkpointed" if args.per_device == 1 else f"_checkpointed{key}"
        rows[args.precision + key] = report
        RESULT.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if report["regression_under_limit"] and report["all_finite"] else 1


if __name__ == "__main__":
    sys.exit(main())
