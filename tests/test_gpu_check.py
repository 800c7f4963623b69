"""benchmarks/gpu_check.sh passes its dry run on the CPU: every step runs and is recorded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_passes_its_dry_run_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=400,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["dry_run"] and result["device"] == "cpu"
    for step in ("cuda_tests", "bf16_train", "sampling", "normal_rows", "packages",
                 "loader_taiwan", "loader_conus"):  # fmt: skip
        assert result[step]["ok"], result[step]
    packages = result["packages"]  # the same package on both sides: the same regression mean
    assert packages["settings"]["device"] == "cpu" and packages["settings"]["members"] == 2
    assert packages["regression_mean_max_abs_diff_normalised"] < 1e-5
    assert packages["export_roundtrip_max_abs_diff"] == 0.0
    assert result["bf16_train"]["steps"] == 2 and result["bf16_train"]["loss"] > 0
    sampling = result["sampling"]
    assert sampling["demo_sampler_patched"]["members_per_s"] > 0
    assert sampling["reference_heun18_whole"]["members_per_s"] > 0
    assert sampling["speedup_demo_sampler_vs_reference_heun18_whole"] > 0
    for precision, row in result["normal_rows"].items():
        if precision == "ok":
            continue
        for call in ("forward", "heun_step"):  # MFU = counted FLOPs / time / the peak
            mfu = row[f"{call}_gflop"] * 1e9 / row[f"{call}_ours_s"] / (row["peak_tflops"] * 1e12)
            assert row[f"{call}_ours_mfu"] == pytest.approx(mfu) and mfu > 0
    fp32 = result["normal_rows"]["fp32"]  # same weights, same noise: the same numbers
    assert fp32["forward_max_abs_diff"] < 1e-4 and fp32["heun_step_speedup"] > 0
    assert set(result["normal_rows"]) == {"ok", "fp32", "bf16"}
    for name, fine, nt in (("taiwan", [64, 64], 16), ("conus", [64, 96], 8)):
        preset = result[f"loader_{name}"]
        assert preset["dry_run"] and preset["fine"] == fine and preset["nt"] == nt
        assert preset["raw_zarr_samples_per_s"] > 0 and preset["sizes"]["repeats"] == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the real run would run")
def test_without_cuda_the_real_run_refuses_and_says_how_to_dry_run():
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2 and "--dry-run" in done.stdout
