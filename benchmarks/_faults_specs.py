"""Archive specs, times at full resolution and unclear errors (hostile round 3, issue 23).

One case per finding, each in a fresh interpreter under a timeout, its peak resident memory
read as ``VmHWM`` (as in :mod:`_faults_bounds`). Inputs are real files: native archives in
ERA5 / EURO-CORDEX conventions written to Zarr (:mod:`corrdiff_xr.data.sources.native_example`),
a catalog YAML, reference-layout NetCDF files and a canonical training store.

A case counts as handled (``refused``) when the bad input is refused with one line (a
:class:`~corrdiff_xr.errors.CorrDiffError`, or the command's exit 2) holding every expected
substring (the variable, key, dim, file or time at fault); the NetCDF cases instead check that
10- and 30-minute times come back exactly, each its own label.

Usage::

    python benchmarks/_faults_specs.py [--json OUT.json]   # or run(workdir)
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _faults_common import finish, summary

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 180.0
COARSE_MAP = {"2m_temperature": "t2m", "10m_u_component_of_wind": "u10"}

#: name -> (child kind, substrings the one-line message must hold, whether an error is wanted)
CASES = {
    "spec: name with /": ("slash", ["coarse archive", "'t2m/850'", "'/'"], True),
    "spec: two sources one name": (
        "two_names", ["both '2m_temperature' and '10m_u_component_of_wind'", "'t'"], True),
    "spec: unknown key varibles": ("typo", ["coarse", "'varibles'", "'variables'"], True),
    "spec: negative window": ("window:[-8, -1]", ["window y=[-8, -1]", "0 <= start"], True),
    "spec: negative window start": ("window:[-1, 5]", ["window y=[-1, 5]", "0 <= start"], True),
    "spec: string window bound": ("window:['0', '5']", ["window y=['0', '5']", "whole"], True),
    "spec: boolean window bound": ("window:[False, True]", ["window y=[False, True]"], True),
    "time: tolerance without unit '30'": ("tolerance:'30'", ["tolerance '30'", "unit"], True),
    "time: tolerance without unit 30": ("tolerance:30", ["tolerance 30 ", "unit"], True),
    "time: NaT tolerance": ("tolerance:'NaT'", ["tolerance 'NaT'", "NaT (not a time)"], True),
    "netcdf: 10-min times keep their resolution": (
        "netcdf:10min", ["minutes since 1990-01-01", "4 distinct of 4, equal"], False),
    "netcdf: 30-min cftime times keep their resolution": (
        "netcdf:30min", ["minutes since 1990-01-01", "4 distinct of 4, equal"], False),
    "score: duplicate time labels": ("score", ["floored.nc", "repeat", "2021-06-01T00:00"], True),
    "train: NaN in input": (
        "train", ["'t2m_coarse'", "NaN", "2020-01-01T05:00"], True),
    "static: NaN/inf": ("static", ["static archive 0", "'orog'", "12 NaN and 1 inf"], True),
}  # fmt: skip


# -- inputs --------------------------------------------------------------------------------------
def setup(workdir: Path) -> None:
    """Native archives, a catalog with a typo, a floored NetCDF and a store with a gap."""
    import numpy as np
    import yaml

    from corrdiff_xr.data import synthetic_dataset
    from corrdiff_xr.data.catalog import catalog_dir
    from corrdiff_xr.data.sources.native_example import native_archives

    arch = native_archives(nt=3, fine_step_hours=1)
    for name, ds in arch.items():
        ds.to_zarr(workdir / f"{name}.zarr", mode="w")
    orog = arch["orography"]
    values = orog["orog"].values.copy()
    values[20:23, 20:24] = np.nan  # inside the fine domain (the margin is 8 cells)
    values[25, 30] = np.inf
    orog.assign(orog=orog["orog"].copy(data=values)).to_zarr(workdir / "gappy.zarr", mode="w")
    spec = yaml.safe_load((catalog_dir() / "archives.yaml").read_text())
    coarse = spec["entries"]["pair"]["kwargs"]["coarse"]
    coarse["varibles"] = coarse.pop("variables")
    (workdir / "typo.yaml").write_text(yaml.safe_dump(spec))
    _floored_netcdf(workdir / "floored.nc")
    ds = synthetic_dataset(ny=16, nx=16, nt=8, factor=4).load()
    gap = ds["t2m_coarse"].values.copy()
    gap[5, 1, 1] = np.nan
    ds = ds.assign(t2m_coarse=ds["t2m_coarse"].copy(data=gap))
    ds.chunk({"time": 2}).to_zarr(workdir / "gap.zarr", mode="w")


def _floored_netcdf(path: Path) -> None:
    """A reference-layout file of 4 ten-minute steps, its times floored to whole hours (as
    the reference's writer, and ours before, stored them): 4 steps, 1 label."""
    import netCDF4
    import numpy as np

    rng = np.random.default_rng(0)
    with netCDF4.Dataset(path, "w") as f:
        for dim, size in (("time", None), ("ensemble", None), ("y", 6), ("x", 8)):
            f.createDimension(dim, size)
        for name, units in (("lat", "degrees_north"), ("lon", "degrees_east")):
            v = f.createVariable(name, "f", ("y", "x"))
            v[:] = rng.uniform(40, 50, (6, 8))
            v.units = units
        t = f.createVariable("time", "i8", ("time",))
        t.calendar, t.units = "standard", "hours since 1990-01-01 00:00:00"
        start = (np.datetime64("2021-06-01T00") - np.datetime64("1990-01-01")) // np.timedelta64(
            1, "h"
        )
        t[:] = np.full(4, start)  # 00:00, 00:10, 00:20, 00:30 floored
        pred = f.createGroup("prediction").createVariable(
            "t2m", "f", ("ensemble", "time", "y", "x")
        )
        pred[:] = rng.normal(288, 2, (2, 4, 6, 8))
        pred.units = "K"
        truth = f.createGroup("truth").createVariable("t2m", "f", ("time", "y", "x"))
        truth[:] = rng.normal(288, 2, (4, 6, 8))
        truth.units = "K"


# -- the child's side ------------------------------------------------------------------------
def _cli(argv: list[str]) -> str:
    """Run ``corrdiff-xr``; its stderr when it refused (exit 2), else a note of the exit."""
    from corrdiff_xr.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    text = err.getvalue().strip()
    if rc != 2:
        return f"went ahead (exit {rc})"
    raise _Refused(text.splitlines()[-1] if text else "exit 2")


class _Refused(Exception):
    """The command refused: its error line."""


def _archives(w: Path, coarse=None, **kw):
    import warnings

    from corrdiff_xr.data.archives import open_archives

    coarse = coarse or {"url": str(w / "coarse.zarr"), "variables": COARSE_MAP}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return open_archives(coarse, str(w / "fine.zarr"), **kw)


def _netcdf(w: Path, step: str) -> str:
    import netCDF4
    import numpy as np
    import xarray as xr

    from corrdiff_xr.inference.netcdf import write_reference_netcdf
    from corrdiff_xr.scoring.inputs import open_reference_netcdf

    cftime = step == "30min"  # the 30-minute case on a 360-day calendar
    times = xr.date_range("2001-02-30" if cftime else "2021-06-01", periods=4, freq=step,
                          calendar="360_day" if cftime else "standard", use_cftime=cftime)  # fmt: skip
    field = np.random.default_rng(0).normal(288, 2, (2, 4, 6, 8))
    coords = {"time": times.values, "y": np.arange(6.0), "x": np.arange(8.0)}
    pred = xr.Dataset({"t2m": (("member", "time", "y", "x"), field, {"units": "K"})}, coords)
    path = write_reference_netcdf(w / f"gen_{step}.nc", pred, truth=pred.isel(member=0))
    with netCDF4.Dataset(path) as f:
        units = f["time"].units
    got = open_reference_netcdf(path)["prediction"]["time"].values
    same = len(got) == len(times) and all(a == b for a, b in zip(got, times.values))
    return f"units {units!r}: {len(set(got))} distinct of {len(times)}, {'equal' if same else 'DIFFERENT'}"


def _child(kind: str, w: Path) -> str:
    """The case's body: the refusal's message (raised), or a note of what happened."""
    kind, _, arg = kind.partition(":")
    coarse = str(w / "coarse.zarr")
    if kind == "slash":
        _archives(w, {"url": coarse, "variables": {"2m_temperature": "t2m/850"}})
    elif kind == "two_names":
        both = {"2m_temperature": "t", "10m_u_component_of_wind": "t"}
        _archives(w, {"url": coarse, "variables": both})
    elif kind == "typo":
        from corrdiff_xr.data.catalog import open_entry

        open_entry(w / "typo.yaml", "pair", coarse_url=coarse, fine_url=str(w / "fine.zarr"))
    elif kind == "window":
        _archives(w, window={"y": ast.literal_eval(arg)})
    elif kind == "tolerance":
        _archives(w, match="nearest", tolerance=ast.literal_eval(arg))
    elif kind == "netcdf":
        return _netcdf(w, arg)
    elif kind == "score":
        return _cli(["score", str(w / "floored.nc")])
    elif kind == "train":
        return _cli(
            ["train", "--config", "tiny_regression", f"data.source={w}/gap.zarr",
             "data.catalog_params={}", "data.train_period=null", f"training.output_dir={w}/run",
             "training.duration=16", "training.total_batch_size=2", "training.progress=false",
             "training.loader.num_workers=2"]
        )  # fmt: skip
    elif kind == "static":
        _archives(w, static=str(w / "gappy.zarr"))
    return "went ahead"


def _child_main(kind: str, workdir: str) -> None:
    from corrdiff_xr.errors import CorrDiffError

    crashed, error = False, True
    try:
        message, error = _child(kind, Path(workdir)), False
    except (CorrDiffError, _Refused) as err:
        message = str(err)
    except BaseException as err:  # a crash is a failure, reported as such
        message, crashed = f"CRASH {type(err).__name__}: {err}", True
    print(json.dumps({"message": message[:600], "crashed": crashed, "error": error}))


# -- the parent's side -----------------------------------------------------------------------
def _peak_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(next(ln.split()[1] for ln in f if ln.startswith("VmHWM:"))) / 1024
    except (OSError, StopIteration):
        return None


def _case(name: str, kind: str, expect: list[str], want_error: bool, workdir: Path) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", kind, str(workdir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    start, peak = time.perf_counter(), 0.0
    while proc.poll() is None and time.perf_counter() - start < TIMEOUT_S:
        peak = max(peak, _peak_mb(proc.pid) or 0.0)
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    out = proc.stdout.read().strip().splitlines()
    result = json.loads(out[-1]) if out else None
    if result is None:
        message = (
            f"timed out after {seconds:.0f} s"
            if seconds >= TIMEOUT_S
            else proc.stderr.read()[-300:]
        )
        result = {"message": message, "crashed": True, "error": False}
    message = result["message"]
    refused = (
        not result["crashed"]
        and result["error"] == want_error
        and "\n" not in message
        and "Traceback" not in message  # a worker's traceback folded into the line
        and all(s in message for s in expect)
    )
    return {"name": name, "refused": refused, "peak_mem_mb": round(peak, 1) or None,
            "seconds": round(seconds, 2), "message": message.replace(f"{workdir}/", "")}  # fmt: skip


def run(workdir: Path) -> dict:
    """Every case in a fresh interpreter; the summary ``benchmarks/faults.py`` merges."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    setup(workdir)
    cases = [_case(name, *spec, workdir) for name, spec in CASES.items()]
    return summary(cases)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child_main(*args.child)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(tmp))
    return finish(
        result,
        args.json,
        lambda c: (
            f"{c['name']:50s} {c['seconds']:6.1f} s  peak {c['peak_mem_mb']} MB  {c['message']}"
        ),
        totals=False,
    )


if __name__ == "__main__":
    sys.exit(main())
