"""Shipped configs are templates (``data.source=...`` alone retargets them) and a run can be
bounded in wall-clock time (``training.max_minutes``) and continued."""

from __future__ import annotations

import logging

import pytest
import torch
import yaml
from _train_helpers import synthetic_store, tiny_config

from corrdiff_xr import cli
from corrdiff_xr.config import TrainRunConfig, from_dict, load_yaml
from corrdiff_xr.model import CorrDiff
from corrdiff_xr.training import CONFIG_DIR, load_run_config, train

SHIPPED = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("data") / "syn.zarr")


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_takes_another_source_with_data_source_alone(name, store, tmp_path):
    reg = tmp_path / "reg.safetensors"
    reg.write_bytes(b"")
    needs = "regression_checkpoint" in (load_yaml(CONFIG_DIR / f"{name}.yaml")["training"] or {})
    extra = [f"training.regression_checkpoint={reg}"] if needs else []
    cfg = load_run_config(name, [f"data.source={store}", *extra])
    assert cfg.data.source == store
    assert cfg.data.catalog_params == {} and cfg.data.storage_options == {}


def test_the_dropped_catalog_parameters_are_named_and_can_be_given_again(store, caplog):
    with caplog.at_level(logging.WARNING):
        cfg = load_run_config("tiny_regression", [f"data.source={store}"])
    assert cfg.data.catalog_params == {} and cfg.data.train_period is None
    assert "data.catalog_params ['nt'] are dropped" in caplog.text
    assert "data.train_period ['2020-01-01T00:00', '2020-01-20T23:00'] is dropped" in caplog.text
    kept = load_run_config("tiny_regression", ["data.catalog_params.seed=3"])
    assert kept.data.catalog_params == {"nt": 552, "seed": 3}  # same source: merged
    for clear in ("data.catalog_params={}", "data.catalog_params=null"):
        assert load_run_config("tiny_regression", [clear]).data.catalog_params == {}
    again = load_run_config(
        "tiny_regression", ["data.source=catalog:demo/demo", "data.catalog_params.nt=48"]
    )
    assert again.data.catalog_params == {"nt": 48}
    # given again for a new source, the mapping replaces the file's: never a blend of both
    other = load_run_config(
        "tiny_regression",
        ["data.source=catalog:archives/pair", 'data.catalog_params={"start": ""}'],
    )
    assert other.data.catalog_params == {"start": ""}


def _weights(path):
    return CorrDiff.load(path).state_dict()


def test_a_run_stopped_at_max_minutes_continues_to_the_weights_of_an_uninterrupted_run(
    store, tmp_path, capsys
):
    whole = train(from_dict(TrainRunConfig, tiny_config(store, tmp_path / "whole", duration=12)))
    assert whole.completed and not whole.timed_out
    data = tiny_config(store, tmp_path / "cut", duration=12, max_minutes=1e-6)
    cfg_file = tmp_path / "cut.yaml"
    cfg_file.write_text(yaml.safe_dump(data))
    assert cli.main(["train", "--config", str(cfg_file)]) == 0  # a clean stop, not a failure
    assert "stopped at training.max_minutes after 4 samples" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()] == ["000000000004"]
    # the weights so far are usable at once (a diffusion run's regression_checkpoint)
    cut = _weights(tmp_path / "cut" / "model.safetensors")
    saved = _weights(tmp_path / "cut" / "checkpoints" / "000000000004" / "model.safetensors")
    assert all(torch.equal(cut[k], saved[k]) for k in cut)
    second = train(from_dict(TrainRunConfig, data))  # the same command again: 4 more
    assert second.timed_out and second.nimg == 8
    done = train(from_dict(TrainRunConfig, data))
    assert done.completed and not done.timed_out and done.nimg == 12
    a = _weights(whole.output_dir / "model.safetensors")
    b = _weights(done.output_dir / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_grid_the_network_cannot_halve_is_refused_at_open_with_the_shape_that_works(tmp_path):
    from corrdiff_xr.config import ConfigError
    from corrdiff_xr.data import synthetic_dataset

    odd = tmp_path / "odd.zarr"
    synthetic_dataset(ny=18, nx=21, nt=4, factor=3).to_zarr(odd)
    data = tiny_config(str(odd), tmp_path / "run")  # channel_mult (1, 2): multiples of 2
    data["network"]["padding"] = "none"  # the default pads instead
    with pytest.raises(ConfigError, match=r"18x21 \(y, x\) does not divide by 2.*crop it to 18x20"):
        train(from_dict(TrainRunConfig, data))
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any step
    data["task"] = "patched_diffusion"
    data["patch"] = {"shape": [9, 8]}
    data["training"]["regression_checkpoint"] = str(odd)  # never read: refused first
    with pytest.raises(ConfigError, match=r"patch.shape 9x8 .*crop it to 8x8"):
        train(from_dict(TrainRunConfig, data))
