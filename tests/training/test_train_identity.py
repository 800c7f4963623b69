"""A training output directory knows what run it holds: refused, noticed and forced resumes."""

from __future__ import annotations

import json
import logging
import re
import shutil

import pytest
import torch
import yaml
from _train_helpers import synthetic_store, tiny_config

from corrdiff_xr import cli
from corrdiff_xr.config import TrainRunConfig, from_dict, to_dict
from corrdiff_xr.data import MissingVariableError
from corrdiff_xr.errors import OutputExistsError
from corrdiff_xr.model import CorrDiff
from corrdiff_xr.testing import TINY_NETWORK
from corrdiff_xr.training import checkpoint as ckpt
from corrdiff_xr.training import train
from corrdiff_xr.training.identity import IDENTITY_FILE, RunIdentityError

CHANNELS = TINY_NETWORK.model_channels  # the tiny configs' network
WIDER = 2 * CHANNELS


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("data") / "syn.zarr")


@pytest.fixture(scope="module")
def other_stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("other")
    return {
        "other": synthetic_store(root / "other.zarr"),
        "bigger": synthetic_store(root / "bigger.zarr", n=32),
    }


def _cfg(source, out, *, network=None, data=None, **training):
    d = tiny_config(source, out, **{"duration": 4, **training})
    d["network"].update(network or {})
    d["data"].update(data or {})
    return from_dict(TrainRunConfig, d)


def _snapshot(out):
    """Bytes of every checkpoint file and the final model: what a refused run must not touch."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*.safetensors")) + sorted(out.rglob("*.pt"))
    }


def _run_cli(tmp_path, cfg, capsys):
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    code = cli.main(["train", "--config", str(path)])
    return code, capsys.readouterr().err


def test_a_new_run_marks_its_directory_and_records_its_identity(store, tmp_path):
    from corrdiff_xr._outputs import product_of

    train(_cfg(store, tmp_path / "run"))
    assert product_of(tmp_path / "run") == "train"
    record = json.loads((tmp_path / "run" / IDENTITY_FILE).read_text())
    identity = record["identity"]
    assert identity["task"] == "regression" and identity["data"]["grid"] == [16, 16]
    assert identity["data"]["targets"] == ["t2m", "tp", "u10", "v10"]
    assert identity["network"]["model_channels"] == CHANNELS and "duration" not in json.dumps(
        identity
    )
    assert record["settings"]["training"]["lr"] == 1e-3
    # the recorded codec is the one the checkpoint carries
    model = CorrDiff.load(
        ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints") / "model.safetensors"
    )
    assert record["codec"] == json.loads(json.dumps(model.codec.to_dict()))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"data": {"source": "other"}}, "data.source"),
        ({"data": {"source": "bigger"}}, "data.grid [16, 16] -> [32, 32]"),
        ({"network": {"model_channels": WIDER}}, f"network.model_channels {CHANNELS} -> {WIDER}"),
        ({"network": {"dropout": 0.1}}, "network.dropout 0.0 -> 0.1"),
    ],
)
def test_a_rerun_with_another_identity_is_refused_before_any_weight_is_loaded(
    store, other_stores, tmp_path, capsys, change, named
):
    out = tmp_path / "run"
    train(_cfg(store, out))
    before = _snapshot(out)
    data = {k: other_stores.get(v, v) for k, v in change.get("data", {}).items()}
    cfg = _cfg(store, out, network=change.get("network"), data=data, duration=8)
    with pytest.raises(RunIdentityError, match=re.escape(named)) as err:
        train(cfg)
    message = str(err.value)
    assert "training.output_dir" in message and "training.resume=force" in message
    assert "size mismatch" not in message
    code, stderr = _run_cli(tmp_path, cfg, capsys)
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and named in stderr
    assert _snapshot(out) == before  # nothing trained, nothing rewritten


def test_a_changed_learning_rate_or_optimiser_setting_resumes_with_a_notice(
    store, tmp_path, caplog
):
    out = tmp_path / "run"
    train(_cfg(store, out))
    with caplog.at_level(logging.WARNING, logger="corrdiff_xr"):
        result = train(_cfg(store, out, duration=8, lr=5e-4, betas=[0.8, 0.99]))
    assert result.nimg == 8 and result.steps == 1  # resumed, not restarted
    notice = " ".join(r.getMessage() for r in caplog.records)
    assert "training.lr 0.001 -> 0.0005" in notice and "training.betas" in notice
    assert "training.duration 4 -> 8" in notice
    # the optimiser continued with the configured settings, not those saved in the checkpoint
    state = ckpt.load_trainer_state(ckpt.latest_checkpoint(out / "checkpoints"))
    assert state["optimizer"]["param_groups"][0]["betas"] == (0.8, 0.99)
    assert state["optimizer"]["param_groups"][0]["lr"] == 5e-4
    assert json.loads((out / IDENTITY_FILE).read_text())["settings"]["training"]["lr"] == 5e-4


def test_force_continues_a_checkpoint_on_new_data_and_keeps_its_codec(store, tmp_path, caplog):
    from corrdiff_xr.data import synthetic_dataset

    out = tmp_path / "run"
    train(_cfg(store, out))
    codec = CorrDiff.load(out / "model.safetensors").codec
    # new data: other values, variables written in another order, no consolidated metadata
    ds = synthetic_dataset(ny=16, nx=16, nt=8, factor=4, seed=7, chunks={"time": 2})
    new = tmp_path / "new.zarr"
    ds[list(ds.data_vars)[::-1]].to_zarr(new, consolidated=False)
    with pytest.raises(RunIdentityError, match="data.source"):
        train(_cfg(new, out, duration=8))
    with caplog.at_level(logging.WARNING, logger="corrdiff_xr"):
        result = train(_cfg(new, out, duration=8, resume="force"))
    assert result.nimg == 8 and result.steps == 1
    assert "as forced" in caplog.text
    assert CorrDiff.load(out / "model.safetensors").codec == codec  # statistics included
    record = json.loads((out / IDENTITY_FILE).read_text())
    assert record["identity"]["data"]["source"] == str(new)
    assert [h["nimg"] for h in record["history"]] == [4]
    assert any("data.source" in d for d in record["history"][0]["differences"])
    # from now on the forced identity is the run's: a plain re-run resumes
    assert train(_cfg(new, out, duration=12)).nimg == 12


def test_a_resumed_run_whose_data_lack_a_variable_fails_naming_it(store, tmp_path):
    out = tmp_path / "run"
    train(_cfg(store, out))
    without = ["t2m_coarse", "u10_coarse", "v10_coarse", "tp_coarse", "tcwv"]  # no msl
    with pytest.raises(RunIdentityError, match=r"data.inputs .*\(without \['msl'\]\)"):
        train(_cfg(store, out, data={"inputs": without}, duration=8))
    with pytest.raises(MissingVariableError, match=r"input variable\(s\) \['msl'\]"):
        train(_cfg(store, out, data={"inputs": without}, duration=8, resume="force"))


def test_a_wider_network_cannot_be_forced_onto_a_checkpoint(store, tmp_path):
    from corrdiff_xr.model import CheckpointError

    out = tmp_path / "run"
    train(_cfg(store, out))
    with pytest.raises(CheckpointError, match="another shape") as err:
        train(_cfg(store, out, network={"model_channels": WIDER}, duration=8, resume="force"))
    assert "size mismatch" not in str(err.value)


def test_a_diffusion_run_knows_its_regression_checkpoint_by_content(store, tmp_path):
    reg = tmp_path / "reg"
    train(_cfg(store, reg))
    out = tmp_path / "diff"
    d = tiny_config(store, out, task="diffusion", duration=4, regression_checkpoint=str(reg))
    train(from_dict(TrainRunConfig, d))
    record = json.loads((out / IDENTITY_FILE).read_text())
    assert len(record["identity"]["regression_checkpoint"]["blake2b"]) == 32
    train(_cfg(store, reg, duration=8))  # the regression checkpoint file changes
    d["training"]["duration"] = 8
    with pytest.raises(RunIdentityError, match="regression_checkpoint.blake2b"):
        train(from_dict(TrainRunConfig, d))


def test_an_existing_file_or_a_foreign_directory_is_never_trained_into(store, tmp_path, capsys):
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("mine")
    for out in (afile, afile / "run", foreign):
        with pytest.raises(OutputExistsError, match=str(out)):
            train(_cfg(store, out))
        code, stderr = _run_cli(tmp_path, _cfg(store, out), capsys)
        assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
        assert "Traceback" not in stderr
    assert afile.read_text() == "mine" and sorted(p.name for p in foreign.iterdir()) == [
        "thesis.tex"
    ]


def test_an_empty_directory_or_a_marked_one_without_checkpoints_starts_a_new_run(store, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train(_cfg(store, empty)).steps == 1
    # as if killed before its first checkpoint: nothing to resume, so another run may start
    shutil.rmtree(empty / "checkpoints")
    result = train(_cfg(store, empty, network={"model_channels": WIDER}))
    assert result.steps == 1
    assert (
        json.loads((empty / IDENTITY_FILE).read_text())["identity"]["network"]["model_channels"]
        == WIDER
    )


def test_checkpoints_without_an_identity_record_need_force(store, tmp_path):
    out = tmp_path / "run"
    train(_cfg(store, out))
    (out / IDENTITY_FILE).unlink()
    with pytest.raises(RunIdentityError, match="no identity.json"):
        train(_cfg(store, out, duration=8))
    assert train(_cfg(store, out, duration=8, resume="force")).nimg == 8
    assert (out / IDENTITY_FILE).exists()


def test_weights_resumed_with_a_notice_equal_an_uninterrupted_run_with_the_same_settings(
    store, tmp_path
):
    # extending the duration is no identity change: 4 + 4 samples give the weights of 8
    train(_cfg(store, tmp_path / "split", duration=4))
    split = train(_cfg(store, tmp_path / "split", duration=8))
    whole = train(_cfg(store, tmp_path / "whole", duration=8))
    a = CorrDiff.load(split.output_dir / "model.safetensors").state_dict()
    b = CorrDiff.load(whole.output_dir / "model.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_runs_recorded_before_padding_existed_resume_and_another_padding_is_refused(
    store, tmp_path
):
    out = tmp_path / "run"
    train(_cfg(store, out))
    # the default padding is left out of the record, so a record written before it existed
    # (no "padding" key) is the same run; any other padding is another network
    assert '"padding"' not in (out / IDENTITY_FILE).read_text()
    train(_cfg(store, out, duration=8))
    with pytest.raises(RunIdentityError, match="network.padding"):
        train(_cfg(store, out, network={"padding": "zero"}, duration=12))
