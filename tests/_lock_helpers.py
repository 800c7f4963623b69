"""A real second process holding an output's lock, for the tests of concurrent writers."""

from __future__ import annotations

import subprocess
import sys

_HOLD = """
import sys
from corrdiff_xr._lock import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin (or kills us)
"""


def hold_lock(target) -> subprocess.Popen:
    """Start a process that holds ``target``'s lock until its stdin is closed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(target)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def release(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
