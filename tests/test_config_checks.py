"""Every numeric setting is checked when its config is built; errors name key, value, range."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path

import pytest
import yaml

from corrdiff_xr import cli, config
from corrdiff_xr._constraints import CHECK, Checked
from corrdiff_xr.config import (
    ConfigError,
    NetworkConfig,
    PatchConfig,
    SamplerConfig,
    TrainRunConfig,
    from_dict,
    load_config,
    to_dict,
)

NAN, INF = math.nan, math.inf
BASE = {"task": "regression", "data": {"source": "x.zarr"}}
PATCHED = {"task": "patched_diffusion", "training": {"regression_checkpoint": "r.safetensors"}}

# (dotted key, bad value, key named in the error, value as shown, what is allowed)
FIELDS = [
    ("sampler.num_steps", 0, None, "0", "an integer in [1, 1000]"),
    ("sampler.num_steps", 1001, None, "1001", "an integer in [1, 1000]"),
    ("sampler.sigma_min", 0.0, None, "0.0", "a finite number > 0"),
    ("sampler.sigma_max", INF, None, "inf", "a finite number > 0"),
    ("sampler.rho", NAN, None, "nan", "a finite number > 0"),
    ("sampler.S_churn", INF, None, "inf", "a finite number >= 0"),
    ("sampler.S_min", -1.0, None, "-1.0", "a finite number >= 0"),
    ("sampler.S_max", NAN, None, "nan", "a number >= 0 (inf allowed)"),
    ("sampler.S_noise", -1.0, None, "-1.0", "a finite number > 0"),
    ("sampler.eta", NAN, None, "nan", "a finite number >= 0"),
    ("patch.shape", [8, 0], "patch.shape[1]", "0", "an integer >= 1"),
    ("patch.overlap", -1, None, "-1", "an integer >= 0"),
    ("patch.boundary", -2, None, "-2", "an integer >= 0"),
    ("network.model_channels", 0, None, "0", "an integer >= 1"),
    ("network.channel_mult", [1, 0], "network.channel_mult[1]", "0", "an integer >= 1"),
    ("network.channel_mult_emb", 0, None, "0", "an integer >= 1"),
    ("network.channel_mult_noise", 0, None, "0", "an integer >= 1"),
    ("network.num_blocks", 0, None, "0", "an integer >= 1"),
    ("network.attn_resolutions", [16, -8], "network.attn_resolutions[1]", "-8", "an integer >= 1"),
    ("network.dropout", 1.0, None, "1.0", "a number in [0, 1)"),
    ("network.resample_filter", [1, 0], "network.resample_filter[1]", "0", "an integer >= 1"),
    ("network.N_grid_channels", -4, None, "-4", "an integer >= 0"),
    ("network.lead_time_channels", -1, None, "-1", "an integer >= 0"),
    ("network.lead_time_steps", 0, None, "0", "an integer >= 1"),
    ("network.prob_channels", [-1], "network.prob_channels[0]", "-1", "an integer >= 0"),
    ("edm.sigma_data", NAN, None, "nan", "a finite number > 0"),
    ("edm.P_mean", INF, None, "inf", "a finite number"),
    ("edm.P_std", 0.0, None, "0.0", "a finite number > 0"),
    ("edm.nu", 2.0, None, "2.0", "a finite number > 2"),
    ("edm.flow_shift", 0.0, None, "0.0", "a finite number > 0"),
    ("training.duration", 0, None, "0", "an integer >= 1"),
    ("training.total_batch_size", 0, None, "0", "an integer in [1, 65536]"),
    ("training.total_batch_size", 10**7, None, "10000000", "an integer in [1, 65536]"),
    ("training.batch_size_per_device", 0, None, "0", "an integer in [1, 65536]"),
    ("training.lr", 0.0, None, "0.0", "a finite number > 0"),
    ("training.lr_rampup", -1, None, "-1", "an integer >= 0"),
    ("training.lr_decay", 1.5, None, "1.5", "a number in (0, 1]"),
    ("training.lr_decay_every", 0, None, "0", "an integer >= 1"),
    ("training.betas", [0.9, 1.0], "training.betas[1]", "1.0", "a number in [0, 1)"),
    ("training.eps", 0.0, None, "0.0", "a finite number > 0"),
    ("training.grad_clip", -1.0, None, "-1.0", "a finite number > 0"),
    ("training.max_nonfinite_steps", -1, None, "-1", "an integer >= 0"),
    ("training.max_minutes", 0.0, None, "0.0", "a finite number > 0"),
    ("training.seed", -1, None, "-1", "an integer >= 0"),
    ("training.patch_num", 0, None, "0", "an integer >= 1"),
    ("training.checkpoint_every", 0, None, "0", "an integer >= 1"),
    ("training.keep_checkpoints", 0, None, "0", "an integer >= 1"),
    ("training.log_every", 0, None, "0", "an integer >= 1"),
    ("training.validate_every", 0, None, "0", "an integer >= 1"),
    ("training.validation_batches", 0, None, "0", "an integer >= 1"),
    ("training.validation_members", 0, None, "0", "an integer >= 1"),
    ("training.loader.block_size", 0, None, "0", "an integer >= 1"),
    ("training.loader.num_workers", -1, None, "-1", "an integer >= 0"),
    ("training.loader.prefetch_factor", 0, None, "0", "an integer >= 1"),
    ("training.ema", 0.0, None, "0.0", "a finite number > 0"),
    ("training.ema_rampup_ratio", -0.05, None, "-0.05", "a finite number > 0"),
]

# (settings, keys named in the error with their values, what is needed)
RULES = [
    (
        {"sampler": {"sigma_min": 10.0, "sigma_max": 5.0}},
        "sampler.sigma_min=10.0, sampler.sigma_max=5.0",
        "need sigma_min < sigma_max",
    ),
    (
        {"sampler": {"S_min": 5.0, "S_max": 1.0}},
        "sampler.S_min=5.0, sampler.S_max=1.0",
        "need S_min <= S_max",
    ),
    (
        {**PATCHED, "patch": {"shape": [8, 8], "overlap": 6, "boundary": 1}},
        "patch.shape=(8, 8), patch.overlap=6, patch.boundary=1",
        "leaves no room",
    ),
    (
        {**PATCHED, "patch": {"shape": [8, 8], "boundary": 3}},  # the default overlap, 8 // 4
        "patch.shape=(8, 8), patch.overlap=None, patch.boundary=3",
        "overlap None: a quarter of that side",
    ),
    (
        {"network": {"gridtype": "sinusoidal", "N_grid_channels": 6}},
        "network.gridtype='sinusoidal', network.N_grid_channels=6",
        "divisible by 4",
    ),
    (
        {"network": {"gridtype": "linear", "N_grid_channels": 4}},
        "network.gridtype='linear', network.N_grid_channels=4",
        "N_grid_channels = 2",
    ),
    (
        {"network": {"prob_channels": [0]}},
        "network.prob_channels=(0,), network.lead_time_channels=0",
        "lead_time_channels > 0",
    ),
    (
        {"training": {"total_batch_size": 10, "batch_size_per_device": 4}},
        "training.total_batch_size=10, training.batch_size_per_device=4",
        "a multiple of",
    ),
    (
        {"task": "diffusion"},
        "task='diffusion', edm.objective='residual', training.regression_checkpoint=None",
        "needs training.regression_checkpoint",
    ),
    ({**PATCHED}, "task='patched_diffusion', patch.shape=None", "needs patch.shape"),
    ({"patch": {"shape": [8, 8]}}, "task='regression', patch.shape=(8, 8)", "only that task"),
    (
        {"data": {"source": "x.zarr", "lead_time": "lead"}},
        "data.lead_time='lead', network.lead_time_channels=0",
        "needs both",
    ),
]


def _nested(dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    out = {last: value}
    for part in reversed(parents):
        out = {part: out}
    return out


def _run(settings: dict) -> TrainRunConfig:
    return from_dict(TrainRunConfig, config.merge(BASE, settings))


def _numeric(tp) -> bool:
    """int / float / a tuple of them, optionally ``| None``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_numeric(a) for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is tuple:
        return any(_numeric(a) for a in typing.get_args(tp) if a is not Ellipsis)
    return tp in (int, float)


def _config_classes() -> list[type]:
    return [
        obj
        for obj in vars(config).values()
        if isinstance(obj, type)
        and dataclasses.is_dataclass(obj)
        and obj.__module__ == config.__name__
    ]


def _numeric_fields() -> set[str]:
    """Dotted key (under TrainRunConfig) of every numeric field, for the table's coverage."""
    out, todo = set(), [("", TrainRunConfig)]
    while todo:
        prefix, cls = todo.pop()
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                todo.append((f"{prefix}{f.name}.", hints[f.name]))
            elif _numeric(hints[f.name]):
                out.add(prefix + f.name)
    return out


@pytest.mark.parametrize(
    ("key", "bad", "named", "shown", "allowed"), FIELDS, ids=[row[0] for row in FIELDS]
)
def test_a_bad_numeric_setting_is_refused_naming_the_key_path_value_and_range(
    key, bad, named, shown, allowed
):
    with pytest.raises(ConfigError) as info:
        _run(_nested(key, bad))
    assert str(info.value) == f"{named or key}: {shown} is not {allowed}"


@pytest.mark.parametrize(("settings", "named", "need"), RULES, ids=[row[1] for row in RULES])
def test_settings_that_contradict_each_other_are_refused_naming_every_key(settings, named, need):
    with pytest.raises(ConfigError) as info:
        _run(settings)
    assert str(info.value).startswith(f"{named}: ")
    assert need in str(info.value)


def test_the_table_has_a_row_for_every_numeric_field():
    assert {row[0] for row in FIELDS} == _numeric_fields()


def test_every_numeric_field_of_every_config_declares_a_check():
    classes = _config_classes()
    assert {c.__name__ for c in classes} >= {
        "SamplerConfig",
        "PatchConfig",
        "NetworkConfig",
        "EDMConfig",
        "DataConfig",
        "LoaderConfig",
        "TrainingConfig",
        "TrainRunConfig",
    }
    unchecked = []
    for cls in classes:
        assert issubclass(cls, Checked), f"{cls.__name__} does not run the field checks"
        hints = typing.get_type_hints(cls)
        unchecked += [
            f"{cls.__name__}.{f.name}"
            for f in dataclasses.fields(cls)
            if _numeric(hints[f.name]) and CHECK not in f.metadata
        ]
    assert unchecked == []


def test_limits_themselves_and_inf_where_allowed_are_accepted():
    cfg = _run(
        config.merge(
            PATCHED,
            {
                "patch": {"shape": [8, 8], "overlap": 5, "boundary": 1},  # one kept pixel
                "sampler": {"S_churn": 0.0, "S_min": 0.0, "S_max": INF, "sigma_min": 1e-9},
                "network": {"dropout": 0.0, "gridtype": "linear", "N_grid_channels": 2},
                "edm": {"P_mean": -1.2},
                "training": {
                    "lr_decay": 1.0,
                    "betas": [0.0, 0.0],
                    "max_nonfinite_steps": 0,
                    "total_batch_size": 12,
                    "batch_size_per_device": 4,
                },
            },
        )
    )
    assert cfg.patch.overlap == 5 and cfg.sampler.S_max == INF and cfg.training.betas == (0.0, 0.0)


def test_the_patch_defaults_are_ramps_over_a_quarter_of_the_smaller_patch_side():
    default = PatchConfig(shape=(10, 13))
    assert (default.overlap, default.weights, default.boundary, default.layout) == (
        None,
        "ramp",
        0,
        "compact",
    )
    assert default.overlap_pixels == 2 and default.resolved() == PatchConfig(
        shape=(10, 13), overlap=2
    )
    assert PatchConfig(shape=(10, 13), overlap=0).overlap_pixels == 0  # an explicit 0 stays 0
    assert PatchConfig().overlap_pixels == 0 and PatchConfig().resolved().overlap == 0
    assert PatchConfig(shape=(9, 9), boundary=3).overlap_pixels == 2  # one kept pixel: the limit


def test_every_config_builds_from_its_defaults():
    for cls in _config_classes():
        required = {"source": "x.zarr"} if cls is config.DataConfig else {}
        if cls is TrainRunConfig:
            required = BASE
        assert from_dict(cls, to_dict(from_dict(cls, required))) == from_dict(cls, required)


@pytest.mark.parametrize(
    "path", sorted((Path(config.__file__).parent / "configs").glob("*.yaml")), ids=lambda p: p.stem
)
def test_the_shipped_configs_build(path):
    data = yaml.safe_load(path.read_text())
    network = data.get("network", {})
    if "preset" in network:
        rest = {k: v for k, v in network.items() if k != "preset"}
        data["network"] = to_dict(NetworkConfig.preset(network["preset"], **rest))
    assert isinstance(from_dict(TrainRunConfig, data), TrainRunConfig)


def test_direct_construction_checks_types_choices_and_booleans_too():
    with pytest.raises(ConfigError, match=r"^num_steps: 2.5 is not an integer in \[1, 1000\]$"):
        SamplerConfig(num_steps=2.5)
    with pytest.raises(ConfigError, match=r"^num_steps: True is not an integer in \[1, 1000\]$"):
        SamplerConfig(num_steps=True)
    with pytest.raises(
        ConfigError,
        match=r"^solver: 'rk4' is not one of \['heun', 'euler', 'dpmpp_2m', 'dpmpp_2m_sde', "
        r"'distilled'\]$",
    ):
        SamplerConfig(solver="rk4")
    with pytest.raises(ConfigError, match=r"^weights: 'cosine' is not one of"):
        PatchConfig(weights="cosine")
    with pytest.raises(ConfigError, match=r"^compile: 'yes' is not true or false$"):
        NetworkConfig(compile="yes")
    with pytest.raises(
        ConfigError, match=r"^shape: \(8,\) is not a tuple of 2 items, each an integer >= 1$"
    ):
        PatchConfig(shape=(8,))
    with pytest.raises(ConfigError, match=r"^channel_mult: \(\) is not a non-empty tuple"):
        NetworkConfig(channel_mult=())


def test_overrides_of_the_hostile_trial_are_refused_before_any_work(tmp_path, capsys):
    for override, message in [
        ("sampler.rho=.nan", "sampler.rho: nan is not a finite number > 0"),
        ("sampler.S_noise=-1", "sampler.S_noise: -1.0 is not a finite number > 0"),
        ("edm.sigma_data=.nan", "edm.sigma_data: nan is not a finite number > 0"),
        (
            "training.total_batch_size=10000000",
            "training.total_batch_size: 10000000 is not an integer in [1, 65536]",
        ),
    ]:
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
            load_config(TrainRunConfig, None, ["task=regression", "data.source=x.zarr", override])
        out = tmp_path / "out"
        argv = [
            "train",
            "task=regression",
            "data.source=nowhere.zarr",
            f"training.output_dir={out}",
            override,
        ]
        assert cli.main(argv) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()
