"""What the hostile-input campaigns share: one summary of their cases for ``faults.py``, and
the report each campaign prints when run alone."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def summary(cases: list[dict], **extra) -> dict:
    """``hostile_files``, ``hostile_files_refused`` and the worst peak memory of ``cases``."""
    peaks = [c["peak_mem_mb"] for c in cases if c.get("peak_mem_mb") is not None]
    return {
        "hostile_files": len(cases),
        "hostile_files_refused": sum(c["refused"] for c in cases),
        "peak_mem_mb_worst": max(peaks, default=None),
        **extra,
        "cases": cases,
    }


def finish(
    result: dict, json_path: str | None, line: Callable[[dict], str], *, totals: bool = True
) -> int:
    """Print one ``line(case)`` per case (flagged ``ok``/``BAD`` by ``refused``), the totals,
    write ``json_path``; the exit status: 0 when every hostile input was refused."""
    for c in result["cases"]:
        print(f"{'ok ' if c['refused'] and c.get('within_budget', True) else 'BAD'} {line(c)}")
    if totals:
        print({k: v for k, v in result.items() if k != "cases"})
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["hostile_files_refused"] == result["hostile_files"] else 1
