from __future__ import annotations

import pytest
import torch
import yaml
from _train_helpers import synthetic_store, tiny_config

from corrdiff_xr import cli
from corrdiff_xr.config import ConfigError, TrainRunConfig, from_dict
from corrdiff_xr.model import CorrDiff
from corrdiff_xr.training import load_run_config, train


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("data") / "syn.zarr")


def _cfg(data):
    return from_dict(TrainRunConfig, data)


def _weights(path):
    return CorrDiff.load(path).state_dict()


def test_a_typo_in_a_config_key_fails_before_any_work(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config("nowhere.zarr", tmp_path / "out")))
    assert cli.main(["train", "--config", str(cfg), "training.learning_rate=1e-4"]) == 2
    assert "learning_rate" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="training.lr"):
        load_run_config(cfg, ["++training.lr=fast"])
    assert not (tmp_path / "out").exists()


def test_diffusion_needs_an_existing_regression_checkpoint(tmp_path):
    data = tiny_config("x.zarr", tmp_path, task="diffusion")
    with pytest.raises(ConfigError, match="regression_checkpoint"):
        _cfg(data)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(cfg, [f"training.regression_checkpoint={tmp_path / 'missing.safetensors'}"])


def test_patched_diffusion_needs_a_patch_shape_and_lead_time_needs_both_halves(tmp_path):
    with pytest.raises(ConfigError, match="patch.shape"):
        _cfg(tiny_config("x", tmp_path, task="patched_diffusion", regression_checkpoint="r"))
    with pytest.raises(ConfigError, match="lead_time"):
        _cfg({**tiny_config("x", tmp_path), "data": {"source": "x", "lead_time": "lead_time"}})


def test_a_patch_larger_than_the_domain_is_refused(store, tmp_path):
    reg = tmp_path / "reg.safetensors"
    reg.write_bytes(b"")
    data = tiny_config(
        store, tmp_path / "o", task="patched_diffusion", regression_checkpoint=str(reg)
    )
    data["patch"] = {"shape": [32, 8]}
    with pytest.raises(ConfigError, match="larger than the domain"):
        train(_cfg(data))


def test_regression_training_writes_model_checkpoints_and_tensorboard_scalars(store, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = tiny_config(store, tmp_path / "run", keep_checkpoints=1)
    data["data"]["valid_period"] = ["2020-01-01T04", "2020-01-01T07"]
    result = train(_cfg(data))
    assert result.completed and result.nimg == 8 and result.steps == 2 and result.skipped_steps == 0
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["000000000008"]
    model = CorrDiff.load(tmp_path / "run" / "model.safetensors")
    assert model.residual is None and model.codec.out_channels == ("t2m", "tp", "u10", "v10")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "valid/mae/t2m"} <= set(tags)
    assert [e.step for e in events.Scalars("train/loss")] == [4, 8]
    assert events.Scalars("train/lr")[0].value == pytest.approx(1e-3)
    assert 0 < events.Scalars("valid/mae/t2m")[-1].value < 50  # kelvin
    assert "valid/sample" in events.Tags()["images"]


def test_accumulated_small_batches_give_the_weights_of_one_big_batch(store, tmp_path):
    big = train(_cfg(tiny_config(store, tmp_path / "big", total_batch_size=4)))
    small = train(
        _cfg(tiny_config(store, tmp_path / "small", total_batch_size=4, batch_size_per_device=2))
    )
    a, b = (
        _weights(big.output_dir / "model.safetensors"),
        _weights(small.output_dir / "model.safetensors"),
    )
    # Adam amplifies float noise in near-zero gradients; 1e-5 is 1% of one lr=1e-3 update
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in a)
    assert big.loss == pytest.approx(small.loss, rel=1e-5)


def test_nonfinite_steps_are_skipped_counted_and_stop_the_run(store, tmp_path):
    data = tiny_config(store, tmp_path / "nan", lr=1e30, duration=400, max_nonfinite_steps=2)
    with pytest.raises(FloatingPointError, match="max_nonfinite_steps=2"):
        train(_cfg(data))


@pytest.fixture(scope="module")
def regression_run(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("reg")
    return train(_cfg(tiny_config(store, out, duration=4)))


def test_diffusion_trains_the_residual_on_a_frozen_regression_and_validates_with_crps(
    store, regression_run, tmp_path
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reg_file = regression_run.output_dir / "model.safetensors"
    data = tiny_config(
        store, tmp_path / "diff", task="diffusion", regression_checkpoint=str(reg_file)
    )
    data["data"]["valid_period"] = ["2020-01-01T06", "2020-01-01T07"]
    result = train(_cfg(data))
    assert result.completed and result.skipped_steps == 0
    model = CorrDiff.load(result.output_dir / "model.safetensors")
    assert model.residual is not None
    assert model.sampler_config.num_steps == 2  # the config's sampler: generate's default
    before = _weights(reg_file)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # regression untouched
    events = EventAccumulator(str(tmp_path / "diff" / "tensorboard"))
    events.Reload()
    assert {"valid/crps/t2m", "valid/mae/t2m", "train/loss"} <= set(events.Tags()["scalars"])
    assert events.Scalars("valid/crps/t2m")[-1].value > 0


def test_patched_diffusion_trains_on_random_patches(store, regression_run, tmp_path):
    data = tiny_config(
        store,
        tmp_path / "patched",
        task="patched_diffusion",
        patch_num=2,
        regression_checkpoint=str(regression_run.output_dir),
        duration=4,
    )
    data["patch"] = {"shape": [8, 8]}
    result = train(_cfg(data))
    assert result.completed and result.loss > 0
    assert CorrDiff.load(result.output_dir / "model.safetensors").residual is not None


def test_lead_time_aware_regression_reads_lead_time_labels(tmp_path):
    source = synthetic_store(tmp_path / "lt.zarr", lead_time=True)
    data = tiny_config(source, tmp_path / "lt", duration=4)
    data["data"]["lead_time"] = "lead_time"
    data["network"].update(lead_time_channels=4, lead_time_steps=3)
    result = train(_cfg(data))
    assert result.completed
    assert (
        CorrDiff.load(result.output_dir / "model.safetensors").regression_config.lead_time_channels
        == 4
    )


@pytest.mark.parametrize(
    "name",
    [
        "regression_mini",
        "diffusion_mini",
        "patched_diffusion_mini",
        "regression_normal",
        "diffusion_normal",
        "patched_diffusion_normal",
        "regression_lead_time_mini",
    ],
)
def test_every_shipped_config_validates(name, tmp_path):
    from corrdiff_xr.training import CONFIG_DIR

    reg = tmp_path / "reg.safetensors"
    reg.write_bytes(b"")
    overrides = [f"training.regression_checkpoint={reg}"] if "diffusion" in name else []
    cfg = load_run_config(name, overrides)
    assert (CONFIG_DIR / f"{name}.yaml").exists()
    assert cfg.network.model_channels == (64 if "mini" in name else 128)
    if "diffusion" in name:
        with pytest.raises(ConfigError, match="does not exist"):
            load_run_config(name, [])


def test_bf16_autocast_trains_with_a_progress_bar_showing_samples_per_second(
    store, tmp_path, capsys
):
    result = train(
        _cfg(tiny_config(store, tmp_path / "bf16", precision="bf16", progress=True, duration=4))
    )
    assert result.completed and result.skipped_steps == 0 and result.loss > 0
    assert "samples/s" in capsys.readouterr().err


def test_a_single_nonfinite_step_is_skipped_counted_and_training_goes_on(
    store, tmp_path, monkeypatch
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from corrdiff_xr import edm

    real, calls = edm.regression_loss, []

    def poisoned_once(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 1 else loss

    monkeypatch.setattr(edm, "regression_loss", poisoned_once)
    result = train(_cfg(tiny_config(store, tmp_path / "skip", duration=8)))
    assert result.completed and result.steps == 2 and result.skipped_steps == 1
    events = EventAccumulator(str(tmp_path / "skip" / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("train/skipped_steps")] == [1, 1]


def test_a_batch_larger_than_the_epoch_is_refused_naming_the_setting_and_the_sample_count(
    store, tmp_path
):
    # the store holds 8 times; a 64-sample batch would cycle them 8 times for one step
    data = tiny_config(store, tmp_path / "run", total_batch_size=64, duration=64)
    with pytest.raises(ConfigError, match=r"training\.total_batch_size: 64 .* at most [1-8]\b"):
        train(_cfg(data))
    assert not (tmp_path / "run" / "model.safetensors").exists()
