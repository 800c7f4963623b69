"""Resume and determinism: a run SIGKILLed at random moments, or extended over five processes
with different hash seeds, ends bit-identical to one uninterrupted run; two clean runs agree."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from _train_helpers import synthetic_store, tiny_config

from corrdiff_xr.model import CorrDiff
from corrdiff_xr.training import checkpoint as ckpt


def _command(config: Path) -> list[str]:
    return [sys.executable, "-m", "corrdiff_xr.cli", "train", "--config", str(config)]


def _env(hash_seed: int = 0) -> dict[str, str]:
    # one thread everywhere, so float reductions happen in the same order in every run
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED=str(hash_seed))


def _write_config(tmp_path: Path, source: str, name: str) -> Path:
    # long enough that a restarted run is still going when the kill comes (the loader is fast)
    data = tiny_config(
        source,
        tmp_path / name,
        duration=96,
        checkpoint_every=4,
        keep_checkpoints=2,
        validate_every=1000,
    )
    data["network"]["dropout"] = 0.2  # draws from the random state, which must be resumed too
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _all_checkpoints_readable(root: Path) -> int:
    found = ckpt.list_checkpoints(root)
    for path in found:
        assert ckpt.load_trainer_state(path)["nimg"] == int(path.name)
        CorrDiff.load(path / "model.safetensors")
    return int(found[-1].name) if found else 0


def test_a_run_killed_at_random_points_ends_bit_identical_to_an_uninterrupted_run(tmp_path):
    source = synthetic_store(tmp_path / "data.zarr", nt=8)
    reference = subprocess.run(
        _command(_write_config(tmp_path, source, "ref")),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert reference.returncode == 0, reference.stdout + reference.stderr

    config = _write_config(tmp_path, source, "killed")
    root = tmp_path / "killed" / "checkpoints"
    rng = random.Random(1234)
    kills, reached = 0, 0
    while kills < 2:
        proc = subprocess.Popen(
            _command(config), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            latest = ckpt.latest_checkpoint(root)
            if latest is not None and int(latest.name) > reached:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.6))  # mid-step, mid-save, mid-rotation...
        if proc.poll() is not None:
            break  # finished before we could kill it
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        reached = _all_checkpoints_readable(root)
    assert kills >= 2, "the run finished before it could be interrupted twice"
    final = subprocess.run(
        _command(config), env=_env(), capture_output=True, text=True, timeout=300, check=False
    )
    assert final.returncode == 0, final.stdout + final.stderr
    assert _all_checkpoints_readable(root) == 96

    expected = CorrDiff.load(tmp_path / "ref" / "model.safetensors").state_dict()
    got = CorrDiff.load(tmp_path / "killed" / "model.safetensors").state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert ckpt.load_trainer_state(ckpt.latest_checkpoint(root))["nimg"] == 96


def test_rerunning_a_finished_run_changes_nothing(tmp_path):
    pytest.importorskip("tensorboard")
    from corrdiff_xr.config import TrainRunConfig, from_dict
    from corrdiff_xr.training import train

    source = synthetic_store(tmp_path / "data.zarr", nt=8)
    cfg = from_dict(TrainRunConfig, tiny_config(source, tmp_path / "run", duration=4))
    first = train(cfg)
    weights = CorrDiff.load(first.output_dir / "model.safetensors").state_dict()
    again = train(cfg)
    assert again.steps == 0 and again.nimg == 4 and again.completed
    after = CorrDiff.load(first.output_dir / "model.safetensors").state_dict()
    assert all(torch.equal(weights[k], after[k]) for k in weights)


# -- determinism across processes -------------------------------------------------------------
DURATIONS = (4, 8, 12, 16, 20)


def _unconsolidated_store(path: Path) -> str:
    # no consolidated metadata: Zarr lists the variables in an order that changes with the
    # process's hash seed, which must not reach the channel order
    from corrdiff_xr.data import synthetic_dataset

    synthetic_dataset(ny=16, nx=16, nt=8, factor=4, chunks={"time": 2}).to_zarr(
        path, consolidated=False
    )
    assert (
        not (path / ".zmetadata").exists()
        and "consolidated_metadata" not in (path / "zarr.json").read_text()
    )
    return str(path)


def _train_subprocess(
    tmp_path: Path, source: str, name: str, *, duration: int, hash_seed: int
) -> None:
    data = tiny_config(
        source,
        tmp_path / name,
        duration=duration,
        checkpoint_every=4,
        keep_checkpoints=10,
        validate_every=1000,
    )
    data["network"]["dropout"] = 0.2
    config = tmp_path / f"{name}-{duration}.yaml"
    config.write_text(yaml.safe_dump(data))
    proc = subprocess.run(
        _command(config),
        env=_env(hash_seed),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _tensors(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Model tensors of the final model and of every checkpoint of a run."""
    files = {"final": run / "model.safetensors"}
    files.update(
        {p.name: p / "model.safetensors" for p in ckpt.list_checkpoints(run / "checkpoints")}
    )
    return {name: CorrDiff.load(f).state_dict() for name, f in files.items()}


def _codec_orders(run: Path) -> set[tuple]:
    models = [
        CorrDiff.load(p / "model.safetensors") for p in ckpt.list_checkpoints(run / "checkpoints")
    ]
    return {(m.codec.in_channels, m.codec.out_channels) for m in models}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """One uninterrupted run (hash seed 1) on an unconsolidated store."""
    tmp = tmp_path_factory.mktemp("clean")
    source = _unconsolidated_store(tmp / "data.zarr")
    _train_subprocess(tmp, source, "one", duration=DURATIONS[-1], hash_seed=1)
    return source, tmp / "one"


def test_two_clean_runs_in_fresh_processes_give_bit_identical_weights_and_checkpoints(
    clean_run, tmp_path
):
    source, first = clean_run
    _train_subprocess(tmp_path, source, "two", duration=DURATIONS[-1], hash_seed=2)
    a, b = _tensors(first), _tensors(tmp_path / "two")
    assert a.keys() == b.keys() and len(a) == 1 + len(DURATIONS)
    for name in a:
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name


def test_five_processes_extending_the_duration_with_other_hash_seeds_end_as_one_run(
    clean_run, tmp_path
):
    source, reference = clean_run
    for seed, duration in enumerate(DURATIONS, start=2):
        _train_subprocess(tmp_path, source, "chain", duration=duration, hash_seed=seed)
    orders = _codec_orders(tmp_path / "chain") | _codec_orders(reference)
    assert len(orders) == 1, orders
    inputs, targets = orders.pop()
    assert inputs == tuple(sorted(inputs[:6])) + tuple(sorted(inputs[6:])) and targets == tuple(
        sorted(targets)
    )
    expected, got = _tensors(reference)["final"], _tensors(tmp_path / "chain")["final"]
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    state = ckpt.load_trainer_state(ckpt.latest_checkpoint(tmp_path / "chain" / "checkpoints"))
    assert state["nimg"] == DURATIONS[-1]
