"""Peak memory and wall time of normalisation statistics over a ~10 GB lazy dataset.

The dataset is :func:`corrdiff_xr.data.synthetic_dataset` at 512 x 512, generated chunk by
chunk inside the dask graph, so nothing of its ~10 GB exists at once: the benchmark shows that
:func:`corrdiff_xr.data.compute_stats` streams (each chunk is reduced to three numbers as soon
as it is made) and stays far below the 1.5 GB peak-RSS target. Peak RSS is sampled by a thread
(psutil, every 20 ms) and cross-checked with ``getrusage``'s ``ru_maxrss``.

On a small slice it also runs xarray's own ``ds.mean()`` and ``ds.std()`` side by side, for
the wall-time ratio, and checks that both agree.

Usage::

    python benchmarks/stats_memory.py --json benchmarks/results/stats_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import threading
import time
from datetime import UTC, datetime

import dask
import numpy as np
import psutil
import xarray as xr

from corrdiff_xr.data import compute_stats, synthetic_dataset

TARGET_PEAK_RSS_MB = 1536.0


class PeakRSS:
    """Samples this process's resident set size in a background thread."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak = 0
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak = self._proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def _mb(n: float) -> float:
    return round(n / 2**20, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--ny", type=int, default=512)
    parser.add_argument("--nx", type=int, default=512)
    parser.add_argument("--nt", type=int, default=2300, help="time steps (2300 at 512^2: ~10.5 GB)")
    parser.add_argument("--time-chunk", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--compare-steps", type=int, default=96, help="slice for the xarray comparison"
    )
    args = parser.parse_args(argv)

    ds = synthetic_dataset(ny=args.ny, nx=args.nx, nt=args.nt, chunks={"time": args.time_chunk})
    n_chunks = sum(v.data.npartitions for v in ds.data_vars.values())
    proc = psutil.Process()
    baseline = proc.memory_info().rss
    stats_graph = compute_stats(ds)

    with (
        dask.config.set(scheduler="threads", num_workers=args.threads),
        PeakRSS() as rss,
    ):
        t0 = time.perf_counter()
        stats = stats_graph.compute()
        wall = time.perf_counter() - t0
    ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    # side by side on a slice: our one-pass statistics vs xarray's mean and std
    small = synthetic_dataset(
        ny=args.ny, nx=args.nx, nt=args.compare_steps, chunks={"time": args.time_chunk}
    )
    with dask.config.set(scheduler="threads", num_workers=args.threads):
        t0 = time.perf_counter()
        ours = compute_stats(small).compute()
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        mean, std = dask.compute(small.mean(), small.std())
        t_xr = time.perf_counter() - t0
    rel_err = max(
        float(abs(ours[n].values[1] - float(std[n])) / float(std[n])) for n in small.data_vars
    )
    mean_err = max(
        float(abs(ours[n].values[0] - float(mean[n]))) / max(float(std[n]), 1e-12)
        for n in small.data_vars
    )

    result = {
        "benchmark": "stats_memory",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "params": vars(args) | {"json": None},
        "dataset_bytes": int(ds.nbytes),
        "dataset_gb": round(ds.nbytes / 1e9, 2),
        "n_chunks": int(n_chunks),
        "wall_s": round(wall, 1),
        "throughput_mb_s": round(ds.nbytes / 2**20 / wall, 1),
        "baseline_rss_mb": _mb(baseline),
        "peak_rss_mb": _mb(rss.peak),
        "ru_maxrss_mb": _mb(ru_maxrss),
        "target_peak_rss_mb": TARGET_PEAK_RSS_MB,
        "meets_target": bool(max(rss.peak, ru_maxrss) / 2**20 < TARGET_PEAK_RSS_MB),
        "t2m_mean_std": [round(float(v), 4) for v in stats["t2m"].values],
        "comparison_slice_steps": args.compare_steps,
        "ours_vs_xarray_mean_std_wall_ratio": round(t_ours / t_xr, 3),
        "ours_s": round(t_ours, 2),
        "xarray_mean_std_s": round(t_xr, 2),
        "max_rel_std_diff_vs_xarray": rel_err,
        "max_mean_diff_vs_xarray_in_std": mean_err,
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "numpy": np.__version__,
            "dask": dask.__version__,
            "xarray": xr.__version__,
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        tmp = f"{args.json}.tmp"
        with open(tmp, "w") as fh:
            fh.write(text + "\n")
        os.replace(tmp, args.json)
    return 0 if result["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
