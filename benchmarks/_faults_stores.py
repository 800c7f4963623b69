"""Hostile Zarr stores: holes, ghost arrays, decompression bombs and oversized declarations.

Each case builds a damaged or hostile store and runs what the finding ran on it (opening it
and computing the statistics, ``corrdiff-xr inspect``, ``inspect --scan``) in a fresh
subprocess, recording whether it was handled as required and its peak resident memory
(``VmHWM``, as :func:`_faults_hostile.measure` does). *Handled* means refused with a
:class:`~corrdiff_xr.errors.CorrDiffError`, or (for an absent chunk that reads as NaN and
may have been omitted on purpose) warned of by an ``IntegrityWarning`` naming the variable.
A case past its timeout counts as not handled.

Usage::

    python benchmarks/_faults_stores.py [--json OUT.json]   # or run(workdir) from faults.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _faults_common import finish, summary

ROOT = Path(__file__).resolve().parents[1]
BOMB_BYTES = 3 * 10**9  # what the finding's chunks inflated to (3-4 GB)
TIMEOUT_S = 120


def _base(workdir: Path, *, consolidated: bool = False, **encoding) -> Path:
    """A small canonical store (32 x 32 fine, 8 x 8 coarse, 4 hourly steps)."""
    from corrdiff_xr.data import synthetic_dataset

    path = workdir / "base.zarr"
    shutil.rmtree(path, ignore_errors=True)
    ds = synthetic_dataset(ny=32, nx=32, nt=4, factor=4, seed=3)
    ds.to_zarr(path, consolidated=consolidated, encoding=encoding)
    return path


def _zero_fill(path: Path, name: str) -> None:
    """Give ``name`` the fill value 0.0 (as a store written without _FillValue has it)."""
    meta_path = path / name / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["fill_value"] = 0.0
    meta["attributes"].pop("_FillValue", None)
    meta_path.write_text(json.dumps(meta))


def _deleted(name: str, key: str, *, zero: bool = True) -> Callable[[Path], Path]:
    def build(workdir: Path) -> Path:
        path = _base(workdir)
        if zero:
            _zero_fill(path, name)
        (path / name / key).unlink()
        return path

    return build


def _ghost(workdir: Path) -> Path:
    path = _base(workdir, consolidated=True)
    shutil.rmtree(path / "tp")  # still named in zarr.json's consolidated metadata
    return path


def _zstd_rle(nbytes: int, *, stated: bool) -> bytes:
    """A Zstd frame of RLE blocks (4 bytes per 128 KiB), its content size stated or not."""
    head = b"\x28\xb5\x2f\xfd" + (b"\xe0" + nbytes.to_bytes(8, "little") if stated else b"\x00\x38")
    block = ((131072 << 3) | 2).to_bytes(3, "little") + b"\x07"
    last = ((131072 << 3) | 3).to_bytes(3, "little") + b"\x07"
    return head + block * (nbytes // 131072 - 1) + last


def _gzip_zeros(nbytes: int) -> bytes:
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    piece = bytes(2**26)
    parts = [deflate.compress(piece) for _ in range(nbytes // len(piece))]
    return b"".join(parts) + deflate.flush()


def _blosc_zeros(nbytes: int) -> bytes:
    from numcodecs import Blosc

    return Blosc(cname="zstd", clevel=9).encode(np.zeros(min(nbytes, 2**31 - 2**20), np.uint8))


def _bomb(codec: str, payload: Callable[[], bytes]) -> Callable[[Path], Path]:
    def build(workdir: Path) -> Path:
        import zarr

        compressor = {
            "blosc": zarr.codecs.BloscCodec(),
            "zstd": zarr.codecs.ZstdCodec(),
            "gzip": zarr.codecs.GzipCodec(),
        }[codec]
        path = _base(workdir, t2m={"compressors": [compressor]})
        (path / "t2m" / "c" / "1" / "0" / "0").write_bytes(payload())
        return path

    return build


def _huge_grid(workdir: Path) -> Path:
    """A store of ~100 kB declaring a 30000 x 30000 fine grid (its lat/lon chunks: one
    constant chunk, copied to every key)."""
    import zarr

    path = workdir / "grid.zarr"
    shutil.rmtree(path, ignore_errors=True)
    group = zarr.open_group(path, mode="w")
    group.create_array("time", shape=(1,), dtype="i8", dimension_names=("time",),
                       attributes={"units": "hours since 2020-01-01", "calendar": "standard"})[:] = 0  # fmt: skip
    for dim, n in (("y", 30000), ("x", 30000), ("y_coarse", 8), ("x_coarse", 8)):
        group.create_array(dim, shape=(n,), dtype="f8", dimension_names=(dim,))[:] = np.arange(n)
    for name in ("lat", "lon"):
        arr = group.create_array(name, shape=(30000, 30000), chunks=(1000, 1000), dtype="f8",
                                 dimension_names=("y", "x"))  # fmt: skip
        arr[:1000, :1000] = 50.0
        chunk = (path / name / "c" / "0" / "0").read_bytes()
        for i in range(30):
            for j in range(30):
                (path / name / "c" / str(i)).mkdir(parents=True, exist_ok=True)
                (path / name / "c" / str(i) / str(j)).write_bytes(chunk)
    attrs = {"units": "K", "long_name": "temperature", "coordinates": "lat lon"}
    group.create_array("t2m", shape=(1, 30000, 30000), chunks=(1, 1000, 1000), dtype="f4",
                       fill_value=np.nan, dimension_names=("time", "y", "x"), attributes=attrs)  # fmt: skip
    return path


def _huge_target(workdir: Path) -> Path:
    """A canonical store whose target declares 10**12 values (10**6 hours of 1000 x 1000),
    none written (NaN fill: absent chunks read as missing, so opening only warns)."""
    import dask.array as da
    import pandas as pd
    import xarray as xr

    from corrdiff_xr.data import synthetic_dataset

    path = workdir / "target.zarr"
    if path.exists():
        return path
    base = synthetic_dataset(ny=1000, nx=1000, nt=1, factor=125, seed=1).load()
    nt = 10**6
    coarse = np.broadcast_to(base["t2m_coarse"].values, (nt, 8, 8))
    ds = xr.Dataset(
        {
            "t2m": (
                ("time", "y", "x"),
                da.zeros((nt, 1000, 1000), dtype="f4", chunks=(nt // 10, 1000, 1000)),
                base["t2m"].attrs,
            ),
            "t2m_coarse": (("time", "y_coarse", "x_coarse"), coarse, base["t2m_coarse"].attrs),
            "orography": base["orography"],
        },  # fmt: skip
        coords={
            **{k: v for k, v in base.coords.items() if "time" not in v.dims},
            "time": pd.date_range("2020-01-01", periods=nt, freq="h"),
        },
    )
    encoding = {"t2m_coarse": {"chunks": (nt // 10, 8, 8)}, "t2m": {"chunks": (1, 1000, 1000)}}
    ds.to_zarr(path, compute=False, consolidated=False, encoding=encoding)  # t2m: no chunks
    return path


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path], Path]
    operation: str  # open_stats | inspect | inspect_scan


CASES = [
    Case("deleted_chunk_coarse", _deleted("t2m_coarse", "c/2/0/0"), "open_stats"),
    Case("deleted_chunk_fine", _deleted("t2m", "c/2/0/0"), "open_stats"),
    Case("deleted_chunk_static", _deleted("orography", "c/0/0"), "open_stats"),
    Case("deleted_chunk_fine_nan_fill", _deleted("t2m", "c/2/0/0", zero=False), "open_stats"),
    Case("deleted_chunk_under_inspect_scan", _deleted("tp", "c/3/0/0", zero=False), "inspect_scan"),
    Case("ghost_array_in_consolidated_metadata", _ghost, "open_stats"),
    Case("blosc_bomb", _bomb("blosc", lambda: _blosc_zeros(BOMB_BYTES)), "open_stats"),
    Case("zstd_bomb", _bomb("zstd", lambda: _zstd_rle(BOMB_BYTES, stated=True)), "inspect_scan"),
    Case(
        "zstd_bomb_unstated_size",
        _bomb("zstd", lambda: _zstd_rle(BOMB_BYTES, stated=False)),
        "open_stats",
    ),  # fmt: skip
    Case("gzip_bomb", _bomb("gzip", lambda: _gzip_zeros(BOMB_BYTES)), "open_stats"),
    Case("declared_30000x30000_grid_inspect", _huge_grid, "inspect"),
    Case("declared_1e12_target_inspect_scan", _huge_target, "inspect_scan"),
    Case("declared_1e12_target_stats", _huge_target, "open_stats"),
]


def operate(operation: str, path: str) -> None:
    """What the finding ran on the store (raises what corrdiff_xr raises)."""
    import contextlib
    import io

    if operation == "open_stats":
        from corrdiff_xr.data import open_source
        from corrdiff_xr.data.stats import stats_to_dict

        stats_to_dict(open_source(path, require_targets=False).stats)
        return
    from corrdiff_xr.cli import main
    from corrdiff_xr.errors import CorrDiffError

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()) as out:
        rc = main(["inspect", path, *(["--scan"] if operation == "inspect_scan" else [])])
    if rc != 0:
        raise CorrDiffError(err.getvalue().strip().splitlines()[-1])
    problems = [line for line in out.getvalue().splitlines() if "chunks are absent" in line]
    if problems:
        raise CorrDiffError(f"reported: {problems[0].strip()}")


_PROBE = """
import json, sys, warnings
sys.path.insert(0, sys.argv[3])
from _faults_stores import operate
from corrdiff_xr.errors import CorrDiffError
from corrdiff_xr.data.integrity import IntegrityWarning
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    try:
        operate(sys.argv[1], sys.argv[2])
        error, refused = None, False
    except CorrDiffError as err:
        error, refused = str(err), True
    except BaseException as err:  # a crash is a failure, reported as such
        error, refused = f"{type(err).__name__}: {err}", False
warned = [str(w.message) for w in seen if issubclass(w.category, IntegrityWarning)]
if warned and not refused:
    error, refused = "warned: " + warned[0], True
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print(json.dumps({"refused": refused, "message": (error or "")[:400],
                  "peak_mem_mb": round(peak / 1024, 1)}))
"""


def measure(operation: str, path: Path, *, timeout: float = TIMEOUT_S) -> dict:
    """Run ``operation`` on ``path`` in a fresh interpreter: {refused, message, peak_mem_mb}."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env.setdefault("OMP_NUM_THREADS", "1")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE, operation, str(path), str(Path(__file__).parent)],
            capture_output=True, text=True, timeout=timeout, env=env, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"refused": False, "message": f"timed out after {timeout} s", "peak_mem_mb": None}
    if proc.returncode != 0 or not proc.stdout.strip():
        tail = (proc.stderr or proc.stdout)[-300:]
        return {"refused": False, "message": f"exit {proc.returncode}: {tail}", "peak_mem_mb": None}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(workdir: Path) -> dict:
    """Build every case in ``workdir``, run each in a subprocess, and summarise."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cases = []
    for case in CASES:
        path = case.build(workdir)
        result = measure(case.operation, path)
        cases.append({
            "name": case.name,
            "operation": case.operation,
            "refused": result["refused"],
            "peak_mem_mb": result["peak_mem_mb"],
            "message": result["message"].replace(f"{workdir}/", ""),
        })  # fmt: skip
    return summary(cases)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(tmp))
    return finish(
        result,
        args.json,
        lambda c: f"{c['name']:38s} peak {c['peak_mem_mb']} MB  {c['message'][:150]}",
    )


if __name__ == "__main__":
    sys.exit(main())
