from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

from corrdiff_xr.config import (
    ConfigError,
    from_dict,
    load_config,
    merge,
    parse_overrides,
    to_dict,
)


@dataclasses.dataclass(frozen=True)
class Inner:
    lr: float = 1e-3
    steps: int = 10
    mode: Literal["a", "b"] = "a"


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str
    shape: tuple[int, int] = (8, 8)
    mult: tuple[int, ...] = (1, 2)
    inner: Inner = dataclasses.field(default_factory=Inner)
    checkpoint: str | None = None


def test_from_dict_builds_nested_dataclasses_and_coerces_lists_to_tuples():
    cfg = from_dict(Outer, {"name": "x", "shape": [4, 6], "inner": {"lr": "2e-4", "steps": 3}})
    assert cfg == Outer(name="x", shape=(4, 6), inner=Inner(lr=2e-4, steps=3))


def test_unknown_key_error_names_the_key_path_and_the_valid_keys():
    with pytest.raises(ConfigError, match=r"\['stepz'\] in 'inner'.*steps"):
        from_dict(Outer, {"name": "x", "inner": {"stepz": 3}})


def test_wrong_type_error_names_the_key():
    with pytest.raises(ConfigError, match="inner.steps: expected an integer"):
        from_dict(Outer, {"name": "x", "inner": {"steps": "many"}})
    with pytest.raises(ConfigError, match=r"shape: expected 2 items"):
        from_dict(Outer, {"name": "x", "shape": [1, 2, 3]})
    with pytest.raises(ConfigError, match=r"inner.mode: 'c' is not one of \['a', 'b'\]"):
        from_dict(Outer, {"name": "x", "inner": {"mode": "c"}})


def test_missing_required_key_is_reported():
    with pytest.raises(ConfigError, match="missing required config key 'name'"):
        from_dict(Outer, {})


def test_overrides_accept_dotted_keys_and_the_hydra_plus_plus_habit():
    assert parse_overrides(["inner.lr=1e-4", "++name=run", "shape=[2,3]", "checkpoint=null"]) == {
        "inner": {"lr": 1e-4},
        "name": "run",
        "shape": [2, 3],
        "checkpoint": None,
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["oops"])


def test_load_config_merges_file_and_overrides_and_round_trips(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: base\ninner:\n  lr: 0.5\n  steps: 7\n")
    cfg = load_config(Outer, path, ["inner.steps=9"])
    assert cfg.inner == Inner(lr=0.5, steps=9)
    assert from_dict(Outer, to_dict(cfg)) == cfg


def test_malformed_yaml_error_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(Outer, path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(Outer, path)


def test_merge_is_recursive_and_update_wins():
    assert merge({"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"b": 5}}) == {
        "a": {"b": 5, "c": 2},
        "d": 1,
    }
