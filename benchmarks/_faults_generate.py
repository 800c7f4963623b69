"""Fault campaign for ``corrdiff-xr generate``: a process death at every file write, then a re-run.

A small generate run (tiny model, 16 x 16 grid, Zarr store plus reference NetCDF) is first
run cleanly while a :func:`sys.addaudithook` hook counts its file writes under the output
directory: ``open`` for writing, renames (``os.replace`` audits as ``os.rename``), links,
directory creation and removal. Then, for every write index N (or ``limit`` indices spread
evenly over them), a forked child runs the same command and dies by ``os._exit`` just before
its N-th write - no cleanup, no ``finally`` - and a second child re-runs the command
unchanged. A crash point counts as *repaired* when the re-run exits 0, leaves no hidden
leftovers, and its outputs equal the clean run's: the same files in the store, the same
metadata (every ``zarr.json``), the same values of every variable and coordinate, the same
completion records and the same NetCDF groups, variables, values and attributes.

Scenarios: ``"fresh"`` starts from an empty output directory; ``"overwrite"`` starts from the
outputs of another request (another seed) and passes ``--overwrite`` (so the campaign also
kills the run while it replaces old outputs).

Everything that touches Zarr runs in forked children: zarr starts I/O threads in the process
that uses it, and a forked child of a threaded process must not rely on them. The parent
only forks, waits and compares the children's JSON summaries.

Run directly for the full campaign (``python benchmarks/_faults_generate.py [--limit N]
[--json result.json]``; ``--small`` is the CI test's run, :data:`SMALL`); exit status 1 when
a crash point is not repaired. ``benchmarks/faults.py`` calls :func:`run`.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

CRASH_EXIT = 97
#: audit events that write a file ("writes"), and those that also create or remove ("all")
EVENTS = {"writes": frozenset({"open", "os.rename", "os.link"})}
EVENTS["all"] = EVENTS["writes"] | {"os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# the hook's state; set in a forked child before it runs the command
_STATE: dict[str, Any] = {
    "root": None,
    "limit": None,
    "count": 0,
    "fd": None,
    "log": None,
    "events": EVENTS["all"],
}
_LOCK = threading.Lock()
_HOOKED = False


def _cwd_relative(dir_fd: int | None) -> bool:
    # calls relative to a directory descriptor (inside shutil.rmtree) are counted as the
    # rmtree itself; the default dir_fd is None or AT_FDCWD (negative)
    return dir_fd is None or dir_fd < 0


def _written(event: str, args: tuple) -> str | None:
    """The path ``event`` writes to (or removes), or None for reads and descriptor calls."""
    if event == "open":
        path, mode, flags = args
        writing = (
            any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & _WRITE_FLAGS)
        )
        paths = [path] if writing else []
    elif event in ("os.rename", "os.link"):
        paths = [args[0], args[1]] if _cwd_relative(args[2]) and _cwd_relative(args[3]) else []
    else:  # os.mkdir (path, mode, dir_fd), os.remove/os.rmdir/shutil.rmtree (path, dir_fd)
        paths = [args[0]] if _cwd_relative(args[-1]) else []
    for path in paths:
        if isinstance(path, (str, bytes, os.PathLike)):
            full = os.path.abspath(os.fsdecode(path))
            # a mkdir of an existing directory or a removal of nothing changes nothing
            noop = (event == "os.mkdir" and os.path.isdir(full)) or (
                event in ("os.remove", "os.rmdir", "shutil.rmtree") and not os.path.lexists(full)
            )
            if full.startswith(_STATE["root"]) and not noop:
                return full
    return None


def _hook(event: str, args: tuple) -> None:
    if _STATE["root"] is None or event not in _STATE["events"]:
        return
    path = _written(event, args)
    if path is None:
        return
    with _LOCK:
        _STATE["count"] += 1
        n = _STATE["count"]
    what = f"{event} {os.path.relpath(path, _STATE['root'])}"
    if _STATE["log"] is not None:
        _STATE["log"].append(what)
    if n == _STATE["limit"]:
        os.write(_STATE["fd"], json.dumps({"crashed_at": n, "event": what}).encode())
        os._exit(CRASH_EXIT)


def _after_fork() -> None:
    """Drop the parent's dask thread pools: their threads do not exist in a forked child."""
    import dask.threaded

    dask.threaded.default_pool = None
    dask.threaded.pools.clear()


def _in_child(fn, *args, log: Path | None = None) -> tuple[int, dict]:
    """Run ``fn(*args)`` in a forked child; its exit code and the JSON it sent back."""
    r, w = os.pipe()
    gc.freeze()  # the parent's objects stay out of the child's collections: fewer copied pages
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(r)
        code = 1
        try:
            if log is not None:
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
            _after_fork()
            _STATE["fd"] = w
            os.write(w, json.dumps({"result": fn(*args)}).encode())
            code = 0
        except BaseException:  # noqa: BLE001 - reported to the parent
            os.write(w, json.dumps({"error": traceback.format_exc()}).encode())
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while data := os.read(r, 1 << 16):
        chunks.append(data)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    text = b"".join(chunks).decode()
    return os.waitstatus_to_exitcode(status), json.loads(text) if text else {}


def _setup(root: str, times: int, targets: int | None) -> None:
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.data import open_pair, synthetic_dataset
    from corrdiff_xr.testing import tiny_corrdiff

    # consolidated: every child opens it with one metadata read
    synthetic_dataset(ny=16, nx=16, nt=times, factor=4, seed=2).to_zarr(
        f"{root}/data.zarr", consolidated=True
    )
    codec = Codec.from_pair(open_pair(f"{root}/data.zarr"))
    if targets:
        codec = Codec(codec.inputs, codec.targets[:targets], codec.static, codec.stats, codec.attrs)
    tiny_corrdiff(codec, (16, 16)).save(f"{root}/model.safetensors")


def _generate(
    argv: list[str], root: str, limit: int | None, keep_log: bool = False, summary: bool = False
) -> dict:
    """Run the command (dying at write ``limit``); its exit code, writes and outputs' summary."""
    from corrdiff_xr.cli import main

    _STATE.update(
        root=os.path.abspath(root) + os.sep, limit=limit, count=0, log=[] if keep_log else None
    )
    rc = main(argv)
    writes, _STATE["root"] = _STATE["count"], None  # the summary's reads are not counted
    return {
        "rc": rc,
        "writes": writes,
        "events": _STATE["log"],
        "modules": sorted(sys.modules),
        "summary": _summary(root) if summary and rc == 0 else None,
    }


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def _netcdf_summary(path: Path) -> dict:
    import netCDF4
    import numpy as np

    out = {}
    with netCDF4.Dataset(path) as nc:
        for group in [nc, *nc.groups.values()]:
            name = group.path
            out[f"{name}:attrs"] = {k: str(group.getncattr(k)) for k in group.ncattrs()}
            for vname, var in group.variables.items():
                values = np.ascontiguousarray(
                    var[:].filled(np.nan) if hasattr(var[:], "filled") else var[:]
                )
                out[f"{name}/{vname}"] = {
                    "dims": list(var.dimensions),
                    "dtype": str(values.dtype),
                    "values": _digest(values.tobytes()),
                    "attrs": {k: str(var.getncattr(k)) for k in var.ncattrs()},
                }
    return out


def _summary(out: str) -> dict:
    """What must equal a clean run's: store files, metadata, values, records, NetCDF, leftovers."""
    import numpy as np
    import xarray as xr

    from corrdiff_xr.inference.store import progress, progress_dir

    out = Path(out)
    store, nc = out / "out.zarr", out / "out.nc"
    files = sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())
    meta = {f: json.loads((store / f).read_text()) for f in files if f.endswith("zarr.json")}
    ds = xr.open_zarr(store, consolidated=True)
    values = {
        str(n): [list(v.dims), str(v.dtype), _digest(np.ascontiguousarray(v.values).tobytes())]
        for n, v in ds.variables.items()
    }
    records = progress_dir(store)
    hidden = (
        sorted(p.name for p in records.iterdir() if p.name.startswith("."))
        if records.is_dir()
        else []
    )
    return {
        "files": files,
        "metadata": meta,
        "values": values,
        "attrs": json.loads(json.dumps(ds.attrs, default=str)),
        "records": sorted(progress(store)),
        "record_dir_hidden": hidden,
        "netcdf": _netcdf_summary(nc) if nc.exists() else None,
        "entries": sorted(p.name for p in out.iterdir()),
    }


def _problems(clean: dict, got: dict) -> list[str]:
    problems = []
    for key, want in clean.items():
        have = got.get(key)
        if want == have:
            continue
        if isinstance(want, dict) and isinstance(have, dict):
            names = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
            problems.append(f"{key} differ: {names[:8]}")
        elif isinstance(want, list) and isinstance(have, list):
            extra, lost = sorted(set(have) - set(want)), sorted(set(want) - set(have))
            problems.append(f"{key} differ: extra {extra[:6]}, missing {lost[:6]}")
        else:
            problems.append(f"{key} differ")
    return problems


def _argv(
    root: Path, out: Path, *, members: int, chunk: int | None, patch: bool, netcdf: bool, seed: int
) -> list[str]:
    argv = [
        "generate",
        "--data",
        str(root / "data.zarr"),
        "--checkpoint",
        str(root / "model.safetensors"),
        "--steps",
        "2",
        "--members",
        str(members),
        "--seed",
        str(seed),
        "--zarr",
        str(out / "out.zarr"),
        "--torch-threads",
        "1",
    ]
    if patch:
        argv += ["--patch", "8", "--overlap", "2"]
    if chunk:
        argv += ["--chunks", f"y={chunk}", f"x={chunk}"]
    return argv + (["--netcdf", str(out / "out.nc")] if netcdf else [])


def _indices(total: int, limit: int | None) -> list[int]:
    if limit is None or limit >= total:
        return list(range(1, total + 1))
    if limit <= 1:
        return [1]
    return sorted({1 + round(i * (total - 1) / (limit - 1)) for i in range(limit)})


def _campaign(
    scenario: str, root: Path, argv_for, start, clean: dict, limit: int | None, log: Path
) -> tuple[int, list[dict]]:
    """Count the writes of ``scenario``'s run, then crash and re-run at each index."""
    out = root / f"{scenario}-count"
    start(out)
    rc, counted = _in_child(_generate, argv_for(out), str(out), None, False, log=log)
    if rc != 0 or counted.get("result", {}).get("rc") != 0:
        raise RuntimeError(f"the {scenario} run failed (rc {rc}): {counted}; see {log}")
    total = counted["result"]["writes"]
    details = []
    for n in _indices(total, limit):
        out = root / f"{scenario}-{n}"
        start(out)
        argv = argv_for(out)
        t0 = time.perf_counter()
        rc, crash = _in_child(_generate, argv, str(out), n, False, log=log)
        t1 = time.perf_counter()
        entry = {
            "scenario": scenario,
            "index": n,
            "of": total,
            "crashed": rc == CRASH_EXIT,
            "event": crash.get("event", ""),
        }
        rc, rerun = _in_child(_generate, argv, str(out), None, False, True, log=log)
        entry["rerun_rc"] = rerun.get("result", {}).get("rc", rc) if rc == 0 else rc
        if entry["rerun_rc"] == 0:
            problems = _problems(clean, rerun["result"]["summary"])
        else:  # the command's own message is in children.log; the traceback's last line here
            last = (rerun.get("error") or "").strip().splitlines()[-1:]
            problems = [f"re-run exited {entry['rerun_rc']}" + (f": {last[0]}" if last else "")]
        entry["seconds"] = [round(t1 - t0, 2), round(time.perf_counter() - t1, 2)]
        entry["repaired"] = entry["crashed"] and not problems
        entry["problems"] = problems
        details.append(entry)
        shutil.rmtree(out, ignore_errors=True)
    return total, details


def _preload(names: list[str] = ()) -> None:
    """Import (never run) what a generate child needs, so that every fork starts warm."""
    import importlib

    for name in ("torch", "corrdiff_xr.cli", "corrdiff_xr.cli.generate", *names):
        if name not in sys.modules:
            with contextlib.suppress(Exception):  # a module that only imports in context
                importlib.import_module(name)


def run(
    workdir: Path,
    *,
    limit: int | None = None,
    scenarios: tuple[str, ...] = ("fresh", "overwrite"),
    members: int = 2,
    times: int = 2,
    chunk: int | None = None,
    patch: bool = True,
    targets: int | None = None,
    netcdf: bool = True,
    events: str = "all",
) -> dict:
    """Crash a small ``generate`` at every file write, re-run it, compare with a clean run.

    Parameters
    ----------
    workdir
        Scratch directory (inputs, one output directory per crash point, ``children.log``).
    limit
        Crash at this many write indices per scenario, spread evenly (first and last
        included); None: every index.
    scenarios
        ``"fresh"`` and/or ``"overwrite"`` (see the module docstring).
    members, times, chunk, patch, targets, netcdf
        Size of the run: ensemble members, time steps, spatial chunk (None: one 16 x 16
        chunk), 8 x 8 patches (False: whole-domain sampling, which needs ``chunk=None``),
        number of target variables of the model (None: all four), and whether to write the
        reference NetCDF too.
    events
        What counts as a write: ``"writes"`` (``open`` for writing, renames, links) or
        ``"all"`` (also creating and removing files and directories).

    Returns
    -------
    dict
        ``generate_crash_points`` (indices at which the process died),
        ``generate_crash_points_repaired``, ``writes`` per scenario, ``seconds`` and
        ``details`` (scenario, index, the write it died before, re-run exit code, problems).
    """
    import torch

    _preload()
    torch.set_num_threads(1)  # no OpenMP pool in the parent: forks stay safe
    _STATE["events"] = EVENTS[events]
    try:
        return _run(
            Path(workdir).resolve(),
            limit=limit,
            scenarios=tuple(scenarios),
            size={"members": members, "chunk": chunk, "patch": patch, "netcdf": netcdf},
            times=times,
            targets=targets,
        )
    finally:
        gc.unfreeze()  # the caller's objects are collectable again


def _run(root: Path, *, limit, scenarios, size, times, targets) -> dict:
    global _HOOKED
    if not _HOOKED:
        sys.addaudithook(_hook)
        _HOOKED = True
    t0 = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    log = root / "children.log"
    rc, res = _in_child(_setup, str(root), times, targets, log=log)
    if rc != 0:
        raise RuntimeError(f"setup failed: {res}")
    clean_out = root / "clean"
    rc, res = _in_child(
        _generate,
        _argv(root, clean_out, seed=4, **size),
        str(clean_out),
        None,
        False,
        True,
        log=log,
    )
    if rc != 0 or res.get("result", {}).get("rc") != 0:
        raise RuntimeError(f"the clean run failed: {res}")
    clean = res["result"]["summary"]
    _preload(res["result"]["modules"])  # what the clean run imported lazily
    old = root / "old"  # the outputs of another request, for the overwrite scenario
    if "overwrite" in scenarios:
        _in_child(_generate, _argv(root, old, seed=5, **size), str(old), None, False, log=log)

    def fresh(out: Path) -> None:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()

    def replace(out: Path) -> None:
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(old, out, symlinks=True)

    plans = {
        "fresh": (lambda out: _argv(root, out, seed=4, **size), fresh),
        "overwrite": (lambda out: [*_argv(root, out, seed=4, **size), "--overwrite"], replace),
    }
    writes, details = {}, []
    for scenario in scenarios:
        argv_for, start = plans[scenario]
        writes[scenario], found = _campaign(scenario, root, argv_for, start, clean, limit, log)
        details += found
    crashed = [d for d in details if d["crashed"]]
    return {
        "generate_crash_points": len(crashed),
        "generate_crash_points_repaired": sum(d["repaired"] for d in crashed),
        "writes": writes,
        "seconds": round(time.perf_counter() - t0, 1),
        "details": details,
    }


#: the CI test's run (tests/test_generate_faults.py): every write of the smallest real run
SMALL = {
    "scenarios": ("fresh",),
    "members": 1,
    "times": 2,
    "chunk": None,
    "patch": False,
    "targets": 1,
    "netcdf": False,
    "events": "writes",
}


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--limit", type=int, help="crash points per scenario (default: every write)"
    )
    parser.add_argument("--small", action="store_true", help="the CI test's run (SMALL)")
    parser.add_argument("--workdir", help="scratch directory (default: a temporary one)")
    parser.add_argument("--json", help="write the full result here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(args.workdir or tmp), limit=args.limit, **(SMALL if args.small else {}))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "details"}, indent=1))
    for d in result["details"]:
        if not d["repaired"]:
            print(json.dumps(d))
    return 0 if result["generate_crash_points_repaired"] == result["generate_crash_points"] else 1


if __name__ == "__main__":
    sys.exit(main())
