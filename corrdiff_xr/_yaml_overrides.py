"""YAML config files and ``key=value`` overrides as plain nested mappings.

:mod:`corrdiff_xr.config` turns the merged mapping into checked dataclasses; this module only
reads files and parses overrides, naming the file or the override that is malformed.
"""

from __future__ import annotations

import datetime
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from corrdiff_xr._constraints import ConfigError

__all__ = ["load_yaml", "merge", "parse_overrides"]

_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _parse_scalar(raw: str) -> Any:
    """YAML-parse an override value; PyYAML (YAML 1.1) reads ``1e-4`` as a string, we don't."""
    if raw == "":
        return ""
    value = _iso_dates(yaml.safe_load(raw))
    if isinstance(value, str) and _FLOAT.match(value):
        return float(value)
    return value


def _iso_dates(value: Any) -> Any:
    """Unquoted YAML dates (``2001-01-01``, ``2001-01-01 06:00:00``) as the ISO strings
    written: every time setting is a string in the archive's own calendar."""
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _iso_dates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_iso_dates(v) for v in value]
    return value


def parse_overrides(items: typing.Iterable[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "++c=x"]`` into the nested mapping ``{"a": {"b": 1}, "c": "x"}``."""
    out: dict[str, Any] = {}
    for item in items:
        text = item.lstrip("+")
        if "=" not in text:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = text.split("=", 1)
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        value = _parse_scalar(raw)
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins, and an empty mapping replaces (``key={}``
    clears a mapping the base sets)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and value and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with an error naming the file when it is not one."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = _iso_dates(yaml.safe_load(path.read_text())) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return data
