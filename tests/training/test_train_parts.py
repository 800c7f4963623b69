from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from corrdiff_xr.training import checkpoint as ckpt
from corrdiff_xr.training.distributed import detect


def test_torchrun_variables_give_rank_and_world_size():
    info = detect(
        {
            "RANK": "3",
            "WORLD_SIZE": "8",
            "LOCAL_RANK": "1",
            "MASTER_ADDR": "10.0.0.1",
            "MASTER_PORT": "1234",
        }
    )
    assert (info.rank, info.world_size, info.local_rank, info.master_addr, info.master_port) == (
        3,
        8,
        1,
        "10.0.0.1",
        1234,
    )
    assert info.launcher == "torchrun" and info.distributed


def test_slurm_variables_map_to_rank_and_first_host():
    env = {
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "16",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_NODELIST": "gpu[07-10],cpu1",
    }
    info = detect(env)
    assert (info.rank, info.world_size, info.local_rank, info.master_addr) == (5, 16, 1, "gpu07")
    assert info.launcher == "slurm"


def test_openmpi_variables_map_to_rank():
    env = {
        "OMPI_COMM_WORLD_RANK": "2",
        "OMPI_COMM_WORLD_SIZE": "4",
        "OMPI_COMM_WORLD_LOCAL_RANK": "0",
    }
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

    return ckpt.save_checkpoint(
        root, nimg, save_model=save_model, trainer_state={"nimg": nimg}, keep=keep
    )


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
    assert not list(tmp_path.glob(".*"))  # no partial copy left behind


def test_half_written_directories_are_not_mistaken_for_checkpoints(tmp_path):
    _save(tmp_path, 8)
    (tmp_path / ".000000000016.tmp-abcd1234").mkdir()
    (tmp_path / "000000000024").mkdir()  # no trainer state: incomplete
    assert ckpt.latest_checkpoint(tmp_path).name == "000000000008"


def test_random_states_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    path = ckpt.save_checkpoint(
        tmp_path / "checkpoints",
        8,
        trainer_state={"nimg": 8, "rng": ckpt.rng_state()},
        save_model=lambda d: (d / "model.safetensors").write_bytes(b"weights"),
    )
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99), np.random.seed(99), random.seed(99)  # state moved on
    assert ckpt.latest_checkpoint(tmp_path / "checkpoints") == path
    state = ckpt.load_trainer_state(path)  # read back from the files, weights_only
    assert state["nimg"] == 8
    ckpt.set_rng_state(state["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1])
    assert expected[2] == got[2]


def test_training_normalisation_does_not_depend_on_validation_times(tmp_path):
    # two stores equal over the training period, far apart over the validation period, each
    # with stored statistics of all its times: the training codecs must be identical
    from _train_helpers import tiny_config

    from corrdiff_xr.codec import Codec
    from corrdiff_xr.config import TrainRunConfig, from_dict
    from corrdiff_xr.data import compute_stats, synthetic_dataset, write_stats
    from corrdiff_xr.training import open_training_data

    ds = synthetic_dataset(ny=16, nx=16, nt=8, factor=4, chunks={"time": 2}).load()
    codecs = []
    for shift in (0.0, 50.0):
        other = ds.copy(deep=True)
        for name in ("t2m", "t2m_coarse"):
            other[name][4:] += shift
        path = tmp_path / f"shift{shift:.0f}.zarr"
        other.chunk({"time": 2}).to_zarr(path, mode="w")
        write_stats(str(path), compute_stats(other))
        times = [str(t) for t in ds.time.values.astype("datetime64[h]")]
        cfg = tiny_config(path, tmp_path / "out")
        cfg["data"].update(train_period=[times[0], times[3]], valid_period=[times[4], times[7]])
        train_pair, valid_pair = open_training_data(from_dict(TrainRunConfig, cfg))
        assert valid_pair.fine.sizes["time"] == 4
        codecs.append(Codec.from_pair(train_pair))
    assert codecs[0].stats == codecs[1].stats
    t2m = ds["t2m"][:4].values.astype(np.float64)
    assert codecs[0].stats["t2m"] == pytest.approx((t2m.mean(), t2m.std()), rel=1e-6)
