"""``corrdiff-xr distil``: a checkpoint in, a loadable few-call student out, resumable."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from corrdiff_xr.cli import main
from corrdiff_xr.codec import Codec
from corrdiff_xr.data import open_pair, synthetic_dataset
from corrdiff_xr.inference import downscale
from corrdiff_xr.model import CorrDiff
from corrdiff_xr.testing import tiny_corrdiff

FAST = ["--trajectories", "3", "--steps", "4", "--batch-size", "2", "--teacher-steps", "3"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("distil_cli")
    ds = synthetic_dataset(ny=16, nx=16, nt=4, factor=4, seed=2)
    ds.to_zarr(root / "data.zarr")
    tiny_corrdiff(Codec.from_pair(open_pair(ds)), (16, 16)).save(root / "teacher.safetensors")
    return root


def _error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1, lines
    return lines[0]


def test_distil_writes_a_student_that_generates_in_its_own_number_of_calls(files, tmp_path, capsys):
    out = tmp_path / "student.safetensors"
    argv = ["distil", str(files / "teacher.safetensors"), str(out), "--data",
            str(files / "data.zarr"), "--calls", "4", *FAST]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["calls"] == 4 and summary["updates"] == 4 and summary["samples_seen"] == 8
    assert summary["teacher_calls"] == 3 * 5  # Heun, 3 steps: 5 calls per trajectory
    student = CorrDiff.load(out)
    assert student.sampler_config.solver == "distilled"
    assert student.sampler_config.num_steps == 4
    calls = []
    student.residual.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(2, student.in_channels, 16, 16)
    student.sample(x, generators=[torch.Generator().manual_seed(i) for i in (1, 2)])
    assert len(calls) == 4  # both members in each of its four calls
    ens = downscale(str(files / "data.zarr"), out, members=2, seed=1).compute(scheduler="sync")
    assert all(np.isfinite(ens[n].values).all() for n in ens.data_vars)
    # the same command again: the student exists and is not replaced
    assert main(argv) == 2
    assert f"OUT {out} exists" in _error(capsys)


def test_an_interrupted_distil_command_continues_where_it_stopped(files, tmp_path):
    teacher, data = str(files / "teacher.safetensors"), str(files / "data.zarr")
    whole = tmp_path / "whole.safetensors"
    assert main(["distil", teacher, str(whole), "--data", data, *FAST]) == 0
    # a run stopped after its first checkpoint (by the Python API), then the command again
    from corrdiff_xr.training.distil import DistilConfig
    from corrdiff_xr.training.distil_run import distil

    parts = tmp_path / "parts.safetensors"
    cfg = DistilConfig(trajectories=3, steps=4, batch_size=2, teacher_steps=3)
    first = distil(teacher, open_pair(data), parts, config=cfg, stop_at=2)
    assert first.updates == 2 and not parts.exists()
    assert main(["distil", teacher, str(parts), "--data", data, *FAST]) == 0
    a, b = CorrDiff.load(whole).state_dict(), CorrDiff.load(parts).state_dict()
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=0, atol=0, msg=name)


def test_distil_names_bad_options_and_refuses_a_regression_only_teacher(files, tmp_path, capsys):
    data = str(files / "data.zarr")
    regression = tmp_path / "regression.safetensors"
    teacher = CorrDiff.load(files / "teacher.safetensors")
    tiny_corrdiff(teacher.codec, (16, 16), residual=False).save(regression)
    argv = ["distil", str(regression), str(tmp_path / "s.safetensors"), "--data", data, *FAST]
    assert main(argv) == 2
    assert "regression-only" in _error(capsys)
    argv = ["distil", str(files / "teacher.safetensors"), str(tmp_path / "s.safetensors"),
            "--data", data, "--calls", "3"]  # fmt: skip
    assert main(argv) == 2
    assert "--calls" in capsys.readouterr().err
