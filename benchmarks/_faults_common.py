"""What the hostile-input campaigns share: one summary of their cases for ``faults.py``."""

from __future__ import annotations


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
