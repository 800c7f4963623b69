from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from corrdiff_xr.training import checkpoint as ckpt
from corrdiff_xr.training.distributed import detect


def test_torchrun_variables_give_rank_and_world_size():
    info = detect({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234"})
    assert (info.rank, info.world_size, info.local_rank, info.master_addr, info.master_port) == (3, 8, 1, "10.0.0.1", 1234)
    assert info.launcher == "torchrun" and info.distributed


def test_slurm_variables_map_to_rank_and_first_host():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[07-10],cpu1"}
    info = detect(env)
    assert (info.rank, info.world_size, info.local_rank, info.master_addr) == (5, 16, 1, "gpu07")
    assert info.launcher == "slurm"


def test_openmpi_variables_map_to_rank():
    env = {"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "0"}
    info = detect(env)
    assert (info.rank, info.world_size, info.launcher) == (2, 4, "openmpi")


def test_no_launcher_means_one_process():
    info = detect({})
    assert (info.rank, info.world_size, info.distributed) == (0, 1, False)


def _save(root, nimg, keep=2, fail=False):
    def save_model(directory):
        (directory / "model.safetensors").write_bytes(b"weights %d" % nimg)
        if fail:
            raise RuntimeError("disk full")

    return ckpt.save_checkpoint(root, nimg, save_model=save_model, trainer_state={"nimg": nimg}, keep=keep)


def test_checkpoints_keep_only_the_newest_and_resume_from_the_latest(tmp_path):
    for n in (8, 16, 24, 32):
        _save(tmp_path, n)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["000000000024", "000000000032"]
    latest = ckpt.latest_checkpoint(tmp_path)
    assert ckpt.load_trainer_state(latest) == {"nimg": 32}


def test_a_failed_save_leaves_no_partial_checkpoint(tmp_path):
    _save(tmp_path, 8)
    with pytest.raises(RuntimeError, match="disk full"):
        _save(tmp_path, 16, fail=True)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["000000000008"]
    assert not list(tmp_path.glob(".tmp-*"))


def test_half_written_directories_are_not_mistaken_for_checkpoints(tmp_path):
    _save(tmp_path, 8)
    (tmp_path / ".tmp-000000000016-abcd").mkdir()
    (tmp_path / "000000000024").mkdir()  # no trainer state: incomplete
    assert ckpt.latest_checkpoint(tmp_path).name == "000000000008"


def test_random_states_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    _save_state = ckpt.rng_state()
    torch.save(_save_state, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]
    assert os.path.exists(tmp_path / "rng.pt")
