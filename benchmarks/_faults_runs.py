"""Runs that meet each other or a changed input: each must be refused, never mix or replace.

Every case drives the real ``corrdiff-xr`` command in fresh subprocesses (a small wrapper,
:data:`_CLI`, that reports the exit status and the process's peak resident memory,
``VmHWM``) on the tiny model and 16 x 16 data of :mod:`_faults_generate`:

* ``resume_after_input_changed_in_place``: ``generate`` killed after 8 of 24 blocks, the
  input's orography multiplied by 1.5 in place, the same command again;
* ``resume_after_input_store_regenerated``: the same, the whole input store rewritten
  (another seed);
* ``concurrent_generate_overwrite``: two ``generate --overwrite`` (seeds 0 and 1) on one
  store, the second started while the first runs;
* ``calibrate_json_onto_existing_file``: ``calibrate --json`` naming a user's file;
* ``calibrate_out_dangling_symlink``: ``calibrate --out`` naming a dangling link;
* ``concurrent_converts``: two ``convert`` without ``--overwrite`` to one destination,
  released at the same moment;
* ``killed_convert_temporaries``: ``convert`` killed just before it renames its finished
  copy into place, then the same command again.

A kill is deterministic: the wrapper's audit hook ends the process (``os._exit``, no
cleanup) before the N-th rename onto a path containing a given text. Processes wait for a
line on stdin after their imports, so that "concurrent" means concurrent. *Refused* means
handled as required (see each case's check); ``message`` is the refused run's error line.

Run directly (``python benchmarks/_faults_runs.py [--json OUT]``) or from ``faults.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _faults_common import summary

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TIMES = 24

# argv: [--die-at TEXT N] [--wait] corrdiff-xr arguments...
_CLI = """
import json, os, sys
args = sys.argv[1:]
if args[0] == "--die-at":
    text, n, args = args[1], int(args[2]), args[3:]
    seen = [0]
    def hook(event, a):
        if event == "os.rename" and text in os.fsdecode(a[1]):
            seen[0] += 1
            if seen[0] == n:
                os._exit(137)
    sys.addaudithook(hook)
wait = args[0] == "--wait"
args = args[1:] if wait else args
from corrdiff_xr.cli import main
import corrdiff_xr.cli.generate, corrdiff_xr.cli.convert, corrdiff_xr.cli.calibrate
import torch, zarr, xarray
if wait:
    print("ready", flush=True)
    sys.stdin.readline()
try:
    rc = main(args)
except SystemExit as exit_:
    rc = exit_.code if isinstance(exit_.code, int) else 1
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print(json.dumps({"rc": rc, "peak_mem_mb": round(peak / 1024, 1)}), flush=True)
"""


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _start(argv: list[str], *, wait: bool = False, die_at: tuple[str, int] | None = None):
    pre = (["--die-at", die_at[0], str(die_at[1])] if die_at else []) + (["--wait"] if wait else [])
    proc = subprocess.Popen(
        [sys.executable, "-c", _CLI, *pre, *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    if wait:
        assert proc.stdout.readline().strip() == "ready"
    return proc


def _finish(proc, timeout: float = 600) -> dict:
    """Exit status, peak memory (None: killed) and error line of a started process."""
    out, err = proc.communicate(timeout=timeout)
    report = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    errors = [line for line in err.splitlines() if "error:" in line]
    return {
        "rc": report.get("rc", proc.returncode),
        "peak_mem_mb": report.get("peak_mem_mb"),
        "error": errors[-1] if errors else (err.strip().splitlines() or [""])[-1],
    }


def _cli(argv: list[str], **kw) -> dict:
    return _finish(_start(argv, **kw))


def _python(code: str, *args: str) -> None:
    subprocess.run([sys.executable, "-c", code, *args], check=True, env=_env())


def _generate(root: Path, out: Path, *extra: str) -> list[str]:
    return ["generate", "--data", str(root / "data.zarr"),
            "--checkpoint", str(root / "model.safetensors"), "--steps", "2", "--members", "2",
            "--zarr", str(out), "--torch-threads", "1", *extra]  # fmt: skip


def _peak(*runs: dict) -> float | None:
    peaks = [r["peak_mem_mb"] for r in runs if r.get("peak_mem_mb") is not None]
    return max(peaks) if peaks else None


def _records(out: Path) -> int:
    records = out.with_name(out.name + ".progress")
    return sum(not p.name.startswith(".") for p in records.iterdir()) if records.is_dir() else 0


_SCALE_OROGRAPHY = """
import sys, zarr
array = zarr.open_array(sys.argv[1] + "/orography", mode="r+")
array[...] = array[...] * 1.5
"""
_REGENERATE = """
import sys
from corrdiff_xr.data import synthetic_dataset
synthetic_dataset(ny=16, nx=16, nt=int(sys.argv[2]), factor=4, seed=3).to_zarr(
    sys.argv[1], mode="w", consolidated=True)
"""
_SETUP = """
import sys
import _faults_generate
_faults_generate._setup(sys.argv[1], int(sys.argv[2]), None)
"""


def _changed_input(root: Path, work: Path, name: str, change: str) -> dict:
    """Kill generate after 8 blocks, change the input, run the same command again."""
    data = work / "data.zarr"
    os.symlink(root / "model.safetensors", work / "model.safetensors")
    _python(_REGENERATE.replace("seed=3", "seed=2"), str(data), str(TIMES))
    out = work / "out.zarr"
    killed = _cli(_generate(work, out), die_at=(".progress/", 9))
    done = _records(out)
    _python(change, str(data), str(TIMES))
    again = _cli(_generate(work, out))
    refused = killed["rc"] == 137 and again["rc"] == 2 and "changed since" in str(again["error"])
    refused = refused and _records(out) == done  # nothing completed from the new input
    return {"name": name, "refused": refused, "peak_mem_mb": _peak(again),
            "message": f"killed after {done} of {TIMES} blocks; rerun: {again['error']}"}  # fmt: skip


def _concurrent_generate(root: Path, work: Path) -> dict:
    out = work / "out.zarr"
    first = _start(_generate(root, out, "--seed", "0", "--overwrite"), wait=True)
    second = _start(_generate(root, out, "--seed", "1", "--overwrite"), wait=True)
    first.stdin.write("go\n")
    first.stdin.flush()
    lock = work / ".out.zarr.lock"
    deadline = time.monotonic() + 120
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    second.stdin.write("go\n")
    second.stdin.flush()
    b, a = _finish(second), _finish(first)
    identity = json.loads((out / "zarr.json").read_text())["attributes"]["corrdiff_request"]
    seed = identity["request"]["sampling"]["seed"]
    refused = a["rc"] == 0 and b["rc"] == 2 and "being written by another run" in b["error"]
    refused = refused and seed == 0 and _records(out) == TIMES
    return {"name": "concurrent_generate_overwrite", "refused": refused,
            "peak_mem_mb": _peak(a, b), "message": b["error"]}  # fmt: skip


def _calibrate(root: Path, work: Path) -> list[dict]:
    base = ["calibrate", "--checkpoint", str(root / "model.safetensors"),
            "--data", str(root / "data.zarr"), "--members", "2"]  # fmt: skip
    notes = work / "notes.json"
    notes.write_text('{"mine": true}')
    run = _cli([*base, "--out", str(work / "new.safetensors"), "--json", str(notes)])
    kept = notes.read_text() == '{"mine": true}' and not (work / "new.safetensors").exists()
    cases = [{"name": "calibrate_json_onto_existing_file", "refused": run["rc"] == 2 and kept,
              "peak_mem_mb": run["peak_mem_mb"], "message": run["error"]}]  # fmt: skip
    link = work / "link.safetensors"
    link.symlink_to(work / "nowhere.safetensors")
    run = _cli([*base, "--out", str(link)])
    kept = link.is_symlink() and not (work / "nowhere.safetensors").exists()
    cases.append({"name": "calibrate_out_dangling_symlink", "refused": run["rc"] == 2 and kept,
                  "peak_mem_mb": run["peak_mem_mb"], "message": run["error"]})  # fmt: skip
    return cases


def _converts(root: Path, work: Path) -> list[dict]:
    dest = work / "copy.zarr"
    argv = ["convert", "source", str(root / "data.zarr"), str(dest)]
    procs = [_start(argv, wait=True) for _ in range(2)]
    for proc in procs:  # released together
        proc.stdin.write("go\n")
        proc.stdin.flush()
    runs = [_finish(p) for p in procs]
    refused = sorted(r["rc"] for r in runs) == [0, 2]
    message = next((r["error"] for r in runs if r["rc"] == 2), "both succeeded")
    cases = [{"name": "concurrent_converts", "refused": refused, "peak_mem_mb": _peak(*runs),
              "message": message}]  # fmt: skip
    dest = work / "killed.zarr"
    argv = ["convert", "source", str(root / "data.zarr"), str(dest)]
    killed = _cli(argv, die_at=(str(dest), 1))  # just before its copy is renamed into place
    left = [p.name for p in work.glob(".killed.zarr.tmp-*")]
    again = _cli(argv)
    after = [p.name for p in work.glob(".killed.zarr.*")]
    refused = killed["rc"] == 137 and bool(left) and again["rc"] == 0 and not after
    cases.append({"name": "killed_convert_temporaries", "refused": refused,
                  "peak_mem_mb": again["peak_mem_mb"],
                  "message": f"killed run left {left}; the next run left {after}"})  # fmt: skip
    return cases


def run(workdir: Path) -> dict:
    """All cases; ``hostile_files`` counts them, ``hostile_files_refused`` those handled."""
    root = Path(workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    _python(_SETUP, str(root), str(TIMES))

    def sub(name: str) -> Path:
        path = root / name
        path.mkdir()
        return path

    cases = [
        _changed_input(root, sub("in-place"), "resume_after_input_changed_in_place",
                       _SCALE_OROGRAPHY),
        _changed_input(root, sub("regenerated"), "resume_after_input_store_regenerated",
                       _REGENERATE),
        _concurrent_generate(root, sub("concurrent")),
        *_calibrate(root, sub("calibrate")),
        *_converts(root, sub("convert")),
    ]  # fmt: skip
    return summary(cases)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: temporary)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.workdir or Path(tmp))
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    sys.exit(0 if result["hostile_files"] == result["hostile_files_refused"] else 1)
