"""DDP: two CPU processes under torchrun (gloo) train the weights one process trains."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
import yaml
from _train_helpers import synthetic_store, tiny_config

from corrdiff_xr.config import TrainRunConfig, from_dict
from corrdiff_xr.model import CorrDiff
from corrdiff_xr.training import train


def test_two_processes_under_torchrun_match_one_process_with_the_same_total_batch(tmp_path):
    source = synthetic_store(tmp_path / "data.zarr", nt=8, chunk=2)
    # 2 samples per rank and step = one whole 2-step block, so each step sees the same samples
    ddp = tiny_config(
        source, tmp_path / "ddp", duration=8, total_batch_size=4, batch_size_per_device=2
    )
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(ddp))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "corrdiff_xr.cli",
        "train",
        "--config",
        str(config),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    single = train(
        from_dict(
            TrainRunConfig, tiny_config(source, tmp_path / "one", duration=8, total_batch_size=4)
        )
    )
    expected = CorrDiff.load(single.output_dir / "model.safetensors").state_dict()
    got = CorrDiff.load(tmp_path / "ddp" / "model.safetensors").state_dict()
    assert all(torch.allclose(expected[k], got[k], rtol=1e-4, atol=1e-5) for k in expected)
    changed = CorrDiff.load(min((tmp_path / "ddp" / "checkpoints").iterdir()) / "model.safetensors")
    assert any(not torch.equal(changed.state_dict()[k], got[k]) for k in got)  # it did train
