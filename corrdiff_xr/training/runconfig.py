"""Training configs: a YAML file (or the name of a shipped one) plus ``key=value`` overrides.

The shipped examples live in ``corrdiff_xr/configs`` (:data:`CONFIG_DIR`) and are found by
name (``regression_mini``, ``diffusion_mini``, ``patched_diffusion_mini`` ...).
``network: {preset: mini, ...}`` is shorthand for a network preset with field overrides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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

CONFIG_DIR = Path(__file__).parent.parent / "configs"


def _network(data: dict[str, Any], path: str) -> Any:
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


def load_run_config(path: str | Path | None, overrides: list[str] = ()) -> TrainRunConfig:
    """Read and validate a training config (YAML file or shipped name + overrides).

    Raises :class:`ConfigError` naming the key for unknown keys, wrong types, a diffusion
    task without an existing regression checkpoint, and inconsistent settings.
    """
    data = load_yaml(_resolve_config_path(path)) if path is not None else {}
    data = merge(data, parse_overrides(overrides))
    if "network" in data:
        data["network"] = _network(data["network"], "network")
    cfg = from_dict(TrainRunConfig, data)
    reg = cfg.training.regression_checkpoint
    if reg is not None and not Path(reg).exists():
        raise ConfigError(f"training.regression_checkpoint {reg} does not exist")
    return cfg
