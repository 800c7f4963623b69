"""The weight average (``training.ema``) and the loss by noise level: known answers, what the
checkpoints hold and validation scores, bit-identical resume, and the TensorBoard scalars."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _train_helpers import synthetic_store, tiny_config

from corrdiff_xr.config import ConfigError, EDMConfig, TrainRunConfig, from_dict
from corrdiff_xr.model import CorrDiff
from corrdiff_xr.training import checkpoint as ckpt
from corrdiff_xr.training import train
from corrdiff_xr.training.ema import WeightAverage, ema_beta
from corrdiff_xr.training.identity import IDENTITY_FILE, run_settings
from corrdiff_xr.training.monitor import LossBySigma, sigma_bin_edges


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("data") / "syn.zarr")


def _cfg(data) -> TrainRunConfig:
    return from_dict(TrainRunConfig, data)


def _scalars(run_dir) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def _saved(path) -> dict[str, torch.Tensor]:
    return CorrDiff.load(path).state_dict()


# -- the average on its own -------------------------------------------------------------------
def test_the_decay_halves_an_update_over_one_half_life_and_ramps_up_from_a_copy():
    # ten steps of 100 samples make up a half-life of 1000: the oldest update weighs half
    assert ema_beta(100, 5000, halflife=1000) ** 10 == pytest.approx(0.5, rel=1e-12)
    assert ema_beta(4, 0, halflife=1000, rampup_ratio=0.05) == 0.0  # the first step copies
    # the ramp-up caps the half-life at ratio x samples seen: 0.5 x 400 = 200 samples
    assert ema_beta(100, 400, halflife=1e6, rampup_ratio=0.5) == pytest.approx(0.5**0.5)
    assert ema_beta(100, 10**9, halflife=1000, rampup_ratio=0.5) == ema_beta(100, 0, halflife=1000)


def test_k_steps_with_a_constant_decay_give_the_closed_form_average():
    weight = torch.nn.Linear(3, 2)
    start = {n: p.detach().clone() for n, p in weight.named_parameters()}
    average = WeightAverage(weight)
    beta, values = 0.8, [torch.full((), float(v)) for v in (3.0, -1.0, 0.5, 7.0, 2.0)]
    with torch.no_grad():
        for v in values:
            for p in weight.parameters():
                p.fill_(v)
            average.update(weight, beta)
    k = len(values)
    for name, w0 in start.items():
        # beta^k w0 + (1 - beta) sum_i beta^(k - i) w_i
        expected = beta**k * w0 + (1 - beta) * sum(
            beta ** (k - i) * v for i, v in enumerate(values, 1)
        )
        torch.testing.assert_close(average.average[name], expected, rtol=1e-6, atol=1e-6)


def test_applied_swaps_the_average_in_and_the_exact_weights_back():
    weight = torch.nn.Linear(4, 4)
    average = WeightAverage(weight)
    with torch.no_grad():
        weight.weight.mul_(1.0 / 3.0)  # weights the average does not hold
    params = list(weight.parameters())
    raw = [p.detach().clone() for p in params]
    with average.applied(weight):
        assert all(torch.equal(p, average.average[n]) for n, p in weight.named_parameters())
        assert not torch.equal(weight.weight, raw[0])
    assert all(torch.equal(p, r) for p, r in zip(weight.parameters(), raw))
    assert all(a is b for a, b in zip(weight.parameters(), params))  # the optimiser's tensors


def test_an_ema_setting_out_of_range_or_a_ramp_up_without_it_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="training.ema"):
        _cfg(tiny_config("x.zarr", tmp_path, ema=0))
    with pytest.raises(ConfigError, match="training.ema_rampup_ratio"):
        _cfg(tiny_config("x.zarr", tmp_path, ema_rampup_ratio=0.05))
    cfg = _cfg(tiny_config("x.zarr", tmp_path, ema=500_000, ema_rampup_ratio=0.05))
    assert cfg.training.ema == 500_000 and cfg.training.ema_rampup_ratio == 0.05


# -- the average in a run ---------------------------------------------------------------------
def _ema_run(store, out, **training):
    # ramp-up ratio 1: the first step copies (beta 0), the second halves (half-life 4 samples)
    data = tiny_config(store, out, ema=1e6, ema_rampup_ratio=1.0, **training)
    data["data"]["valid_period"] = ["2020-01-01T04", "2020-01-01T07"]
    return data


def test_checkpoints_hold_the_average_and_the_raw_weights_beside_it(store, tmp_path):
    result = train(_cfg(_ema_run(store, tmp_path / "run", keep_checkpoints=3)))
    assert result.completed and result.nimg == 8
    first, second = ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")
    raw1 = ckpt.load_trainer_state(first)["raw_weights"]
    raw2 = ckpt.load_trainer_state(second)["raw_weights"]
    avg1 = _saved(first / "model.safetensors")
    avg2 = _saved(second / "model.safetensors")
    final = _saved(tmp_path / "run" / "model.safetensors")
    for name, w in raw2.items():
        key = f"regression.{name}"
        assert torch.equal(avg1[key], raw1[name])  # beta 0: the average is the weights
        assert torch.equal(avg2[key], w.lerp(avg1[key], 0.5))  # beta 0.5
        assert torch.equal(final[key], avg2[key])  # what generate loads
    assert any(not torch.equal(avg2[f"regression.{n}"], w) for n, w in raw2.items())


def test_validation_scores_the_average(store, tmp_path):
    from corrdiff_xr.training.data import codec_variables, open_training_data
    from corrdiff_xr.training.validation import validate

    data = _ema_run(store, tmp_path / "run", validate_every=4)
    cfg = _cfg(data)
    train(cfg)
    logged = _scalars(tmp_path / "run")["valid/mae/t2m"]
    latest = ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints")
    model = CorrDiff.load(latest / "model.safetensors")
    pair = codec_variables(open_training_data(cfg)[1], model.codec, source=cfg.data.source)

    def mae() -> float:
        metrics, _ = validate(
            cfg, model, pair, model.codec, device=torch.device("cpu"), batch_size=4
        )
        return metrics["mae/t2m"]

    assert logged[8] == pytest.approx(mae(), rel=1e-6)
    model.regression.load_state_dict(ckpt.load_trainer_state(latest)["raw_weights"])
    assert abs(logged[8] - mae()) > 1e-6 * logged[8]  # the raw weights score otherwise


def test_a_run_resumed_step_by_step_ends_with_the_average_and_weights_of_one_run(store, tmp_path):
    def run(name: str):
        data = _ema_run(store, tmp_path / name, duration=16, validate_every=1000)
        data["training"]["ema"] = 6.0  # the ramp-up hands over to the half-life after 6 samples
        data["network"]["dropout"] = 0.2  # the random state is resumed too
        return _cfg(data)

    whole = train(run("whole"))
    assert whole.steps == 4
    for _ in range(4):
        assert train(run("steps"), max_steps=1).steps == 1
    assert train(run("steps")).steps == 0  # done
    for name in ("model.safetensors", "checkpoints/000000000016/model.safetensors"):
        a, b = _saved(tmp_path / "whole" / name), _saved(tmp_path / "steps" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last = "checkpoints/000000000016"
    a = ckpt.load_trainer_state(tmp_path / "whole" / last)["raw_weights"]
    b = ckpt.load_trainer_state(tmp_path / "steps" / last)["raw_weights"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_default_leaves_the_record_as_before_and_turning_ema_on_resumes(
    store, tmp_path, caplog
):
    data = tiny_config(store, tmp_path / "run", duration=4)
    cfg = _cfg(data)
    assert cfg.training.ema is None
    assert "ema" not in json.dumps(run_settings(cfg))
    train(cfg)
    assert "ema" not in (tmp_path / "run" / IDENTITY_FILE).read_text()
    before = _saved(tmp_path / "run" / "model.safetensors")
    # on in a resume: a changed setting, not another run; the average starts at the checkpoint
    with caplog.at_level("INFO", logger="corrdiff_xr"):
        result = train(_cfg(tiny_config(store, tmp_path / "run", duration=8, ema=1e9)))
    assert result.steps == 1 and "training.ema absent -> 1000000000.0" in caplog.text
    raw = ckpt.load_trainer_state(tmp_path / "run" / "checkpoints" / "000000000008")
    after = _saved(tmp_path / "run" / "model.safetensors")
    beta = ema_beta(4, 4, halflife=1e9)
    for name, w in raw["raw_weights"].items():
        key = f"regression.{name}"
        assert torch.equal(after[key], w.lerp(before[key], beta))


# -- the loss by noise level ------------------------------------------------------------------
def test_loss_by_sigma_bins_span_the_training_levels_and_weigh_rows_by_patch():
    edm = EDMConfig(P_mean=-1.2, P_std=1.2)
    assert sigma_bin_edges(edm.P_mean, edm.P_std) == [0.027, 0.091, 0.3, 1.0, 3.3]
    bins = LossBySigma(edm, rows_per_sample=2)
    assert bins.names[0] == "0-0.027" and bins.names[-1] == "3.3-inf"
    sigma = torch.tensor([0.01, 0.3, 0.5, 5.0])
    loss = torch.arange(4.0).reshape(4, 1, 1, 1).expand(4, 2, 2, 2)  # row sums 0, 8, 16, 24
    bins.add(sigma, loss)
    bins.add(torch.tensor([math.nan]), torch.full((1, 2, 2, 2), math.inf))  # left out
    out = bins.flush()
    assert out == {
        "loss_by_sigma/0-0.027": 0.0,
        "count_by_sigma/0-0.027": 1,
        "loss_by_sigma/0.3-1": 24.0,  # (8 + 16) / 2 rows x 2 rows per sample
        "count_by_sigma/0.3-1": 2,
        "loss_by_sigma/3.3-inf": 48.0,
        "count_by_sigma/3.3-inf": 1,
    }
    assert bins.flush() == {}  # started again


@pytest.fixture(scope="module")
def regression_file(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("reg")
    return str(train(_cfg(tiny_config(store, out, duration=4))).output_dir / "model.safetensors")


@pytest.mark.parametrize("task", ["diffusion", "patched_diffusion"])
def test_the_count_weighted_loss_by_sigma_is_the_logged_loss(
    store, regression_file, tmp_path, task
):
    data = tiny_config(
        store, tmp_path / task, task=task, regression_checkpoint=regression_file, ema=8.0
    )
    patches = 1
    if task == "patched_diffusion":
        data["patch"] = {"shape": [8, 8]}
        data["training"]["patch_num"] = patches = 3
    result = train(_cfg(data))
    scalars = _scalars(tmp_path / task)
    losses = {t: v for t, v in scalars.items() if t.startswith("loss_by_sigma/")}
    counts = {t: scalars[t.replace("loss_by", "count_by")] for t in losses}
    assert losses and set(scalars["train/loss"]) == {4, 8}
    for step, loss in scalars["train/loss"].items():
        n = sum(c.get(step, 0) for c in counts.values())
        assert n == 4 * patches  # every row of the step, in one bin each
        weighted = sum(losses[t][step] * counts[t][step] for t in losses if step in losses[t])
        assert weighted / n == pytest.approx(loss, rel=1e-5)
    # the average covers the trained residual only: the frozen mean is the checkpoint's
    saved, frozen = _saved(result.output_dir / "model.safetensors"), _saved(regression_file)
    assert all(torch.equal(saved[k], frozen[k]) for k in frozen)


def test_regression_logs_no_loss_by_sigma(store, tmp_path):
    train(_cfg(tiny_config(store, tmp_path / "reg", duration=4)))
    assert not any("by_sigma" in tag for tag in _scalars(tmp_path / "reg"))


def test_two_processes_log_every_rows_bins_and_average_as_one(store, regression_file, tmp_path):
    import os
    import subprocess
    import sys

    import yaml

    data = tiny_config(
        store,
        tmp_path / "ddp",
        task="diffusion",
        regression_checkpoint=regression_file,
        batch_size_per_device=2,
        keep_checkpoints=3,
        ema=1e6,
        ema_rampup_ratio=1.0,
    )
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(data))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "corrdiff_xr.cli", "train", "--config", str(config)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    scalars = _scalars(tmp_path / "ddp")
    counts = [t for t in scalars if t.startswith("count_by_sigma/")]
    for step, loss in scalars["train/loss"].items():
        n = sum(scalars[t].get(step, 0) for t in counts)
        assert n == 4  # both ranks' rows, summed
        weighted = sum(
            scalars[t.replace("count_by", "loss_by")][step] * scalars[t][step]
            for t in counts
            if step in scalars[t]
        )
        assert weighted / n == pytest.approx(loss, rel=1e-5)
    first, second = ckpt.list_checkpoints(tmp_path / "ddp" / "checkpoints")
    raw2 = ckpt.load_trainer_state(second)["raw_weights"]
    avg1, avg2 = _saved(first / "model.safetensors"), _saved(second / "model.safetensors")
    for name, w in raw2.items():
        assert torch.equal(avg2[f"residual.{name}"], w.lerp(avg1[f"residual.{name}"], 0.5))
