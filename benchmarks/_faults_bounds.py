"""Small inputs asking for unbounded work: each must be refused promptly, or start promptly.

One case per finding of the third hostile round, each in a fresh interpreter under a timeout,
its peak resident memory read as ``VmHWM`` (as in :mod:`_faults_hostile`):

* a units string ``10**10**10`` (a power tower pint would evaluate for ever);
* ``corrdiff-xr generate --members 10**7`` and ``downscale(members=10**7)`` (millions of
  block tasks, gigabytes of graph, before anything was refused);
* ``generate --patch 10**9`` (a patch far larger than the grid: the fusion weights alone were
  an ``ArrayMemoryError``);
* ``train training.total_batch_size=10**7`` (ten million samples per optimiser step);
* ``generate`` over a time axis of 10**5 steps: the first block must be written within
  :data:`FIRST_BLOCK_S` of the command's start (graph construction used to be quadratic in
  the time chunks: 12 s at 2,000 steps, none in 240 s at 10**5). The first block's seconds
  are also reported at :data:`SHORTER` steps (``first_block_seconds``), where the cost of
  the store's start and of submitting blocks shows as well (39 s at 2,000 steps, none in
  240 s at 8,000 when the store's template and every block went through dask at once).

A refusal counts when it is a one-line error naming the limit (the case's ``expect``),
within :data:`PROMPT_S` seconds and :data:`MEMORY_MB` of peak memory, interpreter and torch
included.

Usage::

    python benchmarks/_faults_bounds.py [--json OUT.json] [--steps N]   # or run(workdir)
    python benchmarks/_faults_bounds.py --first-block 2000 8000 100000  # the long axis only
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _faults_common import finish, summary

ROOT = Path(__file__).resolve().parents[1]
STEPS = 10**5
PROMPT_S = 30.0  # a refusal within this (the interpreter's imports take a few seconds)
MEMORY_MB = 1000.0  # and under this peak (torch alone holds ~265 MB)
FIRST_BLOCK_S = 30.0  # the long time axis: first block written within this
TIMEOUT_S = 240.0
SHORTER = (2_000, 8_000)  # long axes also timed to the first block

#: name -> (what the child runs, a regex the refusal must match: the limit named)
CASES = {
    "units_power_tower": ("units", r"units.*(at most|longer|exponent)"),
    "cli_members_1e7": ("cli_members", r"members.*\d"),
    "downscale_members_1e7": ("downscale_members", r"members.*\d"),
    "cli_patch_1e9": ("cli_patch", r"patch.*\d"),
    "train_total_batch_size_1e7": ("train_batch", r"total_batch_size.*\d"),
}


# -- inputs --------------------------------------------------------------------------------------
def setup(workdir: Path, steps: int = STEPS) -> None:
    """A small store (3 times), a store of ``steps`` times, and a tiny model for both."""
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.data import open_pair, synthetic_dataset
    from corrdiff_xr.testing import tiny_corrdiff

    small = synthetic_dataset(ny=16, nx=16, nt=3, factor=4, seed=2)
    small.to_zarr(workdir / "small.zarr", mode="w", consolidated=True)
    tiny_corrdiff(Codec.from_pair(open_pair(small)), (16, 16)).save(workdir / "model.safetensors")
    _long_store(workdir, steps)


def _long_store(workdir: Path, steps: int) -> None:
    import dask.array as da
    import numpy as np
    import pandas as pd

    from corrdiff_xr.data import synthetic_dataset

    # the long axis: 24 hours repeated (values do not matter here), targets zero (they compress)
    day = synthetic_dataset(ny=16, nx=16, nt=24, factor=4, seed=2).load()
    long = day.isel(time=np.arange(steps) % 24)
    long = long.assign_coords(time=pd.date_range("2000-01-01", periods=steps, freq="1h"))
    for name in ("t2m", "u10", "v10", "tp"):
        var = long[name]
        long[name] = var.copy(data=da.zeros(var.shape, var.dtype, chunks=(1000, 16, 16)))
    long.chunk(time=1000).to_zarr(workdir / "long.zarr", mode="w", consolidated=True)


# -- the child's side ------------------------------------------------------------------------
def _cli(argv: list[str]) -> str | None:
    """Run ``corrdiff-xr``; its error line when it refused (exit 2), else None."""
    from corrdiff_xr.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    lines = err.getvalue().strip().splitlines()
    return (lines[-1] if lines else f"exit {rc}") if rc == 2 else None


def _child(kind: str, workdir: Path) -> str | None:
    """The case's body; the refusal's message, or None when it went ahead."""
    w = str(workdir)
    generate = ["generate", "--data", f"{w}/small.zarr", "--checkpoint", f"{w}/model.safetensors"]
    if kind == "units":
        import xarray as xr

        from corrdiff_xr.inference import downscale

        ds = xr.open_zarr(f"{w}/small.zarr")
        ds["t2m_coarse"].attrs["units"] = "10**10**10"
        downscale(ds, f"{w}/model.safetensors")
    elif kind == "cli_members":
        return _cli([*generate, "--zarr", f"{w}/m.zarr", "--members", str(10**7)])
    elif kind == "downscale_members":
        from corrdiff_xr.inference import downscale

        downscale(f"{w}/small.zarr", f"{w}/model.safetensors", members=10**7)
    elif kind == "cli_patch":
        return _cli([*generate, "--zarr", f"{w}/p.zarr", "--patch", str(10**9)])
    elif kind == "train_batch":
        return _cli(
            ["train", "--config", "tiny_regression", f"data.source={w}/small.zarr",
             f"training.output_dir={w}/train", f"training.total_batch_size={10**7}",
             "training.duration=1", "training.progress=false"]
        )  # fmt: skip
    elif kind == "long":
        _cli([*generate[:2], f"{w}/long.zarr", *generate[3:], "--zarr", f"{w}/long_out.zarr",
              "--steps", "1", "--batch-size", "1"])  # fmt: skip
    elif kind == "graph":  # downscale alone: the graph of every block, built up front
        from corrdiff_xr.inference import downscale

        downscale(f"{w}/long.zarr", f"{w}/model.safetensors", steps=1, batch_size=1,
                  chunks={"time": 1})  # fmt: skip
    return None


def _child_main(kind: str, workdir: str) -> None:
    from corrdiff_xr.errors import CorrDiffError

    start = time.perf_counter()
    try:
        message = _child(kind, Path(workdir))
    except CorrDiffError as err:
        message = str(err)
    except BaseException as err:  # a crash is a failure, reported as such
        message, kind = f"CRASH {type(err).__name__}: {err}", "crash"
    print(json.dumps({"message": message and message[:400], "crashed": kind == "crash",
                      "body_s": round(time.perf_counter() - start, 2)}))  # fmt: skip


# -- the parent's side -----------------------------------------------------------------------
def _peak_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(next(ln.split()[1] for ln in f if ln.startswith("VmHWM:"))) / 1024
    except (OSError, StopIteration):
        return None


def _spawn(kind: str, workdir: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.Popen(
        [sys.executable, __file__, "--child", kind, str(workdir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip


def _watch(proc: subprocess.Popen, timeout: float, done=lambda: False) -> tuple[float, float, bool]:
    """Poll ``proc`` until it exits, ``done()`` holds or ``timeout``: (seconds, peak MB, done)."""
    start, peak = time.perf_counter(), 0.0
    while True:
        peak = max(peak, _peak_mb(proc.pid) or 0.0)
        finished = done()
        if finished or proc.poll() is not None or time.perf_counter() - start > timeout:
            seconds = time.perf_counter() - start
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return seconds, round(peak, 1), finished
        time.sleep(0.05)


def _refusal(name: str, kind: str, expect: str, workdir: Path) -> dict:
    proc = _spawn(kind, workdir)
    seconds, peak, _ = _watch(proc, TIMEOUT_S)
    out = proc.stdout.read().strip().splitlines()
    result = json.loads(out[-1]) if out else {"message": None, "crashed": True}
    message = result["message"] or (
        f"timed out after {seconds:.0f} s" if seconds > TIMEOUT_S else proc.stderr.read()[-300:]
    )
    refused = (
        bool(result["message"])
        and not result["crashed"]
        and re.search(expect, message, re.IGNORECASE) is not None
        and seconds < PROMPT_S
        and peak < MEMORY_MB
    )
    return {"name": name, "refused": refused, "peak_mem_mb": peak, "seconds": round(seconds, 2),
            "message": message.replace(f"{workdir}/", "")}  # fmt: skip


def _first_block(workdir: Path, steps: int) -> dict:
    records = workdir / "long_out.zarr.progress"

    def written() -> bool:
        return records.is_dir() and any(not p.name.startswith(".") for p in records.iterdir())

    seconds, peak, done = _watch(_spawn("long", workdir), TIMEOUT_S, written)
    return {
        "name": f"first_block_{steps}_steps",
        "refused": done and seconds < FIRST_BLOCK_S,  # here: started promptly
        "peak_mem_mb": peak,
        "seconds": round(seconds, 2),
        "message": f"first block after {seconds:.1f} s" if done else f"none in {seconds:.0f} s",
    }


def _graph_seconds(workdir: Path) -> float | None:
    """Seconds ``downscale`` takes to build the long axis' graph (imports excluded)."""
    proc = _spawn("graph", workdir)
    _watch(proc, TIMEOUT_S)
    out = proc.stdout.read().strip().splitlines()
    return json.loads(out[-1])["body_s"] if out else None


def _first_blocks(workdir: Path, sizes: tuple[int, ...]) -> dict[str, float | None]:
    """Seconds to the first written block for long axes of ``sizes`` steps (None: none)."""
    out = {}
    for steps in sizes:
        sub = workdir / f"long_{steps}"
        sub.mkdir(exist_ok=True)
        (sub / "model.safetensors").write_bytes((workdir / "model.safetensors").read_bytes())
        _long_store(sub, steps)
        case = _first_block(sub, steps)
        out[str(steps)] = case["seconds"] if case["message"].startswith("first") else None
    return out


def run(workdir: Path, steps: int = STEPS) -> dict:
    """Every case in a fresh interpreter; the summary ``benchmarks/faults.py`` merges."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    setup(workdir, steps)
    cases = [_refusal(name, kind, expect, workdir) for name, (kind, expect) in CASES.items()]
    cases.append(_first_block(workdir, steps))
    return summary(
        cases,
        first_block_seconds_1e5_steps=cases[-1]["seconds"],
        first_block_seconds={
            **_first_blocks(workdir, tuple(n for n in SHORTER if n < steps)),
            str(steps): cases[-1]["seconds"],
        },
        downscale_graph_seconds_1e5_steps=_graph_seconds(workdir),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--steps", type=int, default=STEPS, help="time steps of the long axis")
    parser.add_argument(
        "--first-block", nargs="+", type=int, metavar="STEPS",
        help="only time the first written block of long axes of these many steps",
    )  # fmt: skip
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child_main(*args.child)
        return 0
    if args.first_block:
        with tempfile.TemporaryDirectory() as tmp:
            setup(Path(tmp), 24)  # the model (and a one-day axis, unused)
            seconds = _first_blocks(Path(tmp), tuple(args.first_block))
        print(json.dumps({"first_block_seconds": seconds}))
        return 0 if all(s is not None and s < FIRST_BLOCK_S for s in seconds.values()) else 1
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(tmp), args.steps)
    return finish(
        result,
        args.json,
        lambda c: (
            f"{c['name']:28s} {c['seconds']:7.1f} s  peak {c['peak_mem_mb']} MB  {c['message']}"
        ),
        totals=False,
    )


if __name__ == "__main__":
    sys.exit(main())
