"""The fault campaign: crashes at every write, killed training runs, hostile files.

One command runs the four campaigns and writes their figures to one JSON file::

    python benchmarks/faults.py --json benchmarks/results/faults.json [--quick]

* ``_faults_generate``: ``corrdiff-xr generate`` killed just before each of its file writes,
  then re-run; a crash point is repaired when the re-run equals a clean run;
* ``_faults_train``: training killed (SIGKILL) at random moments and resumed, and the
  five-process chain under different ``PYTHONHASHSEED`` values on an unconsolidated store;
  a trial is identical when its final weights equal an uninterrupted run's bit for bit;
* ``_faults_hostile``: malformed and hostile checkpoints and ``.mdlus`` archives, each loaded
  in a fresh process whose peak memory (VmHWM) is recorded;
* ``_faults_catalogs``: hostile Intake catalogs (imports, templates, path traversal, secrets,
  protocol and endpoint overrides, alias bombs, oversized builders);
* ``_faults_stores``: input stores with holes (deleted chunks, ghost arrays) and size bombs
  (chunks that inflate to GBs, declared grids far larger than their files);
* ``_faults_runs``: runs that meet each other or changed inputs (a resume over a changed input,
  concurrent writers, files a command did not create, a killed ``convert``'s temporaries);
* ``_faults_specs``: archive specs, times and inputs that used to give unclear errors or wrong
  results silently (unknown keys, unstorable names, windows, tolerances, sub-hourly times, NaN);
* ``_faults_bounds``: small inputs asking for unbounded work (units strings, member counts,
  patch and batch sizes, a 10**5-step time axis).

Top-level keys: ``generate_crash_points``, ``generate_crash_points_repaired``,
``train_resume_trials``, ``train_resume_identical``, ``hostile_files`` (checkpoints, archives,
catalogs and the input campaigns), ``hostile_files_refused``, ``peak_mem_mb_worst`` (over every
campaign that measures it); each campaign's own result
sits under its name. ``--quick`` samples 20 crash points per generate scenario and runs one
kill trial. The exit status is 1 when anything was not repaired, not identical or not refused.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import _faults_catalogs  # noqa: E402
import _faults_generate  # noqa: E402
import _faults_hostile  # noqa: E402
import _faults_train  # noqa: E402

#: campaigns of hostile inputs that report ``hostile_files``/``hostile_files_refused`` themselves
INPUT_CAMPAIGNS = ("stores", "runs", "specs", "bounds")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="sample crash points, one kill trial")
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: a temporary one)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="corrdiff-faults-") as tmp:
        work = args.workdir or Path(tmp)
        results = {}
        for name, call in (
            ("generate", lambda d: _faults_generate.run(d, limit=20 if args.quick else None)),
            ("train", lambda d: _faults_train.run(d, kill_trials=1 if args.quick else 4)),
            ("hostile", _faults_hostile.run),
            ("catalogs", _faults_catalogs.run),
            *((name, importlib.import_module(f"_faults_{name}").run) for name in INPUT_CAMPAIGNS),
        ):
            sub = work / name
            sub.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            results[name] = call(sub)
            results[name]["campaign_seconds"] = round(time.perf_counter() - start, 1)
            print(f"{name}: done in {results[name]['campaign_seconds']} s", file=sys.stderr)
    gen, train, hostile, cats = (results[k] for k in ("generate", "train", "hostile", "catalogs"))
    inputs = [results[name] for name in INPUT_CAMPAIGNS]
    peaks = [r.get("peak_mem_mb_worst") for r in (hostile, cats, *inputs)]
    summary = {
        "generate_crash_points": gen["generate_crash_points"],
        "generate_crash_points_repaired": gen["generate_crash_points_repaired"],
        "train_resume_trials": train["train_resume_trials"],
        "train_resume_identical": train["train_resume_identical"],
        "hostile_files": hostile["hostile_files"]
        + cats["hostile_catalogs"]
        + sum(r["hostile_files"] for r in inputs),
        "hostile_files_refused": hostile["hostile_files_refused"]
        + cats["hostile_catalogs_refused"]
        + sum(r["hostile_files_refused"] for r in inputs),
        "peak_mem_mb_worst": max(p for p in peaks if p is not None),
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(),
            "python": platform.python_version(),
        },
        "seconds": round(time.perf_counter() - t0, 1),
        **results,
    }
    # messages name files under the scratch directory, which is this machine's
    text = json.dumps(summary, indent=2, default=str).replace(str(work), "<workdir>")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k not in results}, indent=2, default=str))
    ok = (
        summary["generate_crash_points"] == summary["generate_crash_points_repaired"]
        and summary["train_resume_trials"] == summary["train_resume_identical"]
        and summary["hostile_files"] == summary["hostile_files_refused"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
