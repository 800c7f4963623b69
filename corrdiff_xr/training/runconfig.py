"""Training configs: a YAML file (or the name of a shipped one) plus ``key=value`` overrides.

The shipped examples live in ``corrdiff_xr/configs`` (:data:`CONFIG_DIR`) and are found by
name (``regression_mini``, ``diffusion_mini``, ``patched_diffusion_mini`` ...).
``network: {preset: mini, ...}`` is shorthand for a network preset with field overrides.
Every config is a template: ``data.source=...`` alone points it at other data (the file's
catalog parameters and storage options belong to the file's source and are dropped).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from corrdiff_xr._redact import redact_url
from corrdiff_xr.config import (
    ConfigError,
    NetworkConfig,
    TrainRunConfig,
    from_dict,
    load_yaml,
    merge,
    parse_overrides,
)

__all__ = ["CONFIG_DIR", "load_run_config"]

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent.parent / "configs"


def _network(data: object, path: str) -> object:
    # ``network: {preset: mini, ...}`` is shorthand for the preset with field overrides
    if isinstance(data, dict) and "preset" in data:
        rest = {k: v for k, v in data.items() if k != "preset"}
        try:
            return NetworkConfig.preset(data["preset"], **rest)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    return data


def _resolve_config_path(name: str | Path) -> Path:
    path = Path(name)
    if not path.exists() and (CONFIG_DIR / f"{name}.yaml").exists():
        return CONFIG_DIR / f"{name}.yaml"  # a shipped example, by name
    return path


def _retarget(base: dict[str, Any], update: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """A config is a template: a new ``data.source`` drops the file's catalog parameters,
    storage options and train/valid periods (they were for the file's source); given again,
    they replace the file's instead of merging with them; ``null`` clears."""
    new, old = update.get("data") or {}, base.get("data") or {}
    if not isinstance(data.get("data"), dict):
        return data
    section = dict(data["data"])
    for key in ("catalog_params", "storage_options", "train_period", "valid_period"):
        mapping = key in ("catalog_params", "storage_options")
        if "source" in new and key not in new and old.get(key):
            shown = sorted(old[key]) if mapping else old[key]
            log.warning(
                "data.source=%s replaces the config's source %s: its data.%s %s %s dropped "
                "(give data.%s for the new source)",
                redact_url(str(new["source"])), redact_url(str(old.get("source"))), key, shown,
                "are" if mapping else "is", key,
            )  # fmt: skip
            section[key] = {} if mapping else None
        elif "source" in new and mapping and isinstance(new.get(key), dict):
            section[key] = dict(new[key])
        if mapping and key in section and section[key] is None:
            section[key] = {}
    return {**data, "data": section}


def load_run_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainRunConfig:
    """Read and validate a training config (YAML file or shipped name + overrides).

    Raises :class:`ConfigError` naming the key for unknown keys, wrong types, a diffusion
    task without an existing regression checkpoint, and inconsistent settings.
    """
    base = load_yaml(_resolve_config_path(path)) if path is not None else {}
    update = parse_overrides(overrides)
    data = _retarget(base, update, merge(base, update))
    if "network" in data:
        data["network"] = _network(data["network"], "network")
    cfg = from_dict(TrainRunConfig, data)
    reg = cfg.training.regression_checkpoint
    if reg is not None and not Path(reg).exists():
        raise ConfigError(f"training.regression_checkpoint {reg} does not exist")
    return cfg
