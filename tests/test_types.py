"""The package type-checks: ``mypy corrdiff_xr`` with the ``[mypy]`` settings of setup.cfg
(default strictness: every annotated function is checked) reports no error.

It runs mypy as a user or CI would, from the repository root, in a subprocess with a fresh
cache, so a stale cache cannot hide an error; the errors are printed when it fails.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_mypy_finds_no_error_in_the_package(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "corrdiff_xr", "--cache-dir", str(tmp_path / "cache")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=540,
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, f"mypy corrdiff_xr (exit {run.returncode}):\n{report}"
    assert "Success: no issues found" in report, report
