"""The benchmarks page, written from ``benchmarks/results/*.json`` at every build.

Each results file becomes a section: its scalar figures in a table, then its settings, its
machine and load. Nothing is typed in by hand, so the page cannot drift from the results."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
#: keys shown below the figures rather than among them
_CONTEXT = ("settings", "versions", "load_average_start", "load_average_end", "note", "notes")


def _value(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int | str):
        return str(v).replace("|", "\\|").replace("\n", " ")
    if isinstance(v, list) and len(v) <= 6 and all(isinstance(x, int | float) for x in v):
        return ", ".join(_value(x) for x in v)
    return ""


def _table(rows: list[tuple[str, str]]) -> list[str]:
    if not rows:
        return []
    return ["| figure | value |", "| --- | --- |", *(f"| `{k}` | {v} |" for k, v in rows), ""]


def _flat(data: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Scalar entries, nested dicts flattened one level (``a.b``); long lists left out."""
    rows = []
    for key, v in data.items():
        if key in _CONTEXT and not prefix:
            continue
        if isinstance(v, dict) and not prefix:
            rows += _flat(v, f"{key}.")
        elif (text := _value(v)) != "":
            rows.append((prefix + str(key), text))
    return rows


def section(path: Path) -> list[str]:
    data = json.loads(path.read_text())
    lines = [f"## {path.stem}", "", f"From `benchmarks/results/{path.name}`.", ""]
    if not isinstance(data, dict):
        return lines + ["(not a JSON object)", ""]
    lines += _table(_flat(data))
    for key in _CONTEXT:
        if key in data:
            lines += [f"**{key}**", ""]
            v = data[key]
            lines += _table(_flat(v)) if isinstance(v, dict) else [_value(v) or str(v), ""]
    return lines


def write(out: Path) -> None:
    lines = [
        "# Benchmarks",
        "",
        "Generated from the JSON files the benchmark scripts write (`python benchmarks/NAME.py",
        "--json`). Ratios are measured side by side in one run; each section says the machine,",
        "its load and the settings. Speed targets live here, never in unit tests.",
        "",
    ]
    for path in sorted(RESULTS.glob("*.json")):
        lines += section(path)
    text = "\n".join(lines) + "\n"
    if not out.exists() or out.read_text() != text:  # unchanged: Sphinx keeps its cache
        out.write_text(text)
