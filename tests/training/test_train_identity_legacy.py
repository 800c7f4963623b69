"""Training runs recorded by earlier versions still resume: their regression checkpoint was
recorded by its SHA-256, which is checked against the file and read as the current digest."""

from __future__ import annotations

import hashlib
import json

import pytest
from _train_helpers import synthetic_store, tiny_config

from corrdiff_xr.config import TrainRunConfig, from_dict
from corrdiff_xr.training import train
from corrdiff_xr.training.checkpoint import latest_checkpoint
from corrdiff_xr.training.identity import IDENTITY_FILE, RunIdentityError


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("data") / "syn.zarr")


def _as_recorded_before(out, regression_file) -> None:
    """Rewrite ``out``'s record as the previous version wrote it: the regression checkpoint
    known by ``{"sha256": HEX}`` of its bytes."""
    path = out / IDENTITY_FILE
    record = json.loads(path.read_text())
    sha = hashlib.sha256(regression_file.read_bytes()).hexdigest()
    record["identity"]["regression_checkpoint"] = {"sha256": sha}
    path.write_text(json.dumps(record, indent=1) + "\n")


def _diffusion(store, reg, out, duration):
    d = tiny_config(store, out, task="diffusion", duration=duration, regression_checkpoint=str(reg))
    return from_dict(TrainRunConfig, d)


def _regression(store, out, duration):
    return from_dict(TrainRunConfig, tiny_config(store, out, duration=duration))


def test_a_run_recorded_with_sha256_resumes_and_is_then_recorded_by_the_one_digest(store, tmp_path):
    reg, out = tmp_path / "reg", tmp_path / "diff"
    train(_regression(store, reg, 4))
    train(_diffusion(store, reg, out, 4))
    _as_recorded_before(out, reg / "model.safetensors")
    train(_diffusion(store, reg, out, 8))  # resumed: no identity error
    assert int(latest_checkpoint(out / "checkpoints").name) == 8
    record = json.loads((out / IDENTITY_FILE).read_text())
    weights = (reg / "model.safetensors").read_bytes()
    assert record["identity"]["regression_checkpoint"] == {
        "blake2b": hashlib.blake2b(weights, digest_size=16).hexdigest()
    }
    assert record["history"] == []  # a plain resume, not a forced one


def test_a_run_recorded_with_sha256_is_refused_when_its_regression_checkpoint_changed(
    store, tmp_path
):
    reg, out = tmp_path / "reg", tmp_path / "diff"
    train(_regression(store, reg, 4))
    train(_diffusion(store, reg, out, 4))
    _as_recorded_before(out, reg / "model.safetensors")
    train(_regression(store, reg, 8))  # the regression checkpoint file changes
    with pytest.raises(RunIdentityError, match=r"regression_checkpoint\.sha256 '[0-9a-f]{64}'"):
        train(_diffusion(store, reg, out, 8))
