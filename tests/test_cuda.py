"""CUDA-only checks, skipped cleanly without a GPU (benchmarks/gpu_check.sh runs them on one):
shared-noise patched downscaling on the GPU is chunk-independent for a fixed batch size, and
a bf16 autocast training step gives finite losses; bf16 sampling stays near fp32."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def setup():
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.data import open_pair, synthetic_dataset
    from corrdiff_xr.testing import tiny_corrdiff

    pair = open_pair(synthetic_dataset(ny=32, nx=32, nt=2, factor=4, chunks={"time": 1}))
    return pair, tiny_corrdiff(Codec.from_pair(pair), (32, 32))


def test_patched_downscaling_on_the_gpu_does_not_depend_on_chunking(setup):
    from corrdiff_xr.inference import downscale

    pair, model = setup
    runs = [
        downscale(
            pair,
            model,
            members=2,
            seed=3,
            steps=3,
            patch=16,
            device="cuda",
            batch_size=4,
            chunks=chunks,
        ).compute(scheduler="sync")  # fmt: skip
        for chunks in ({"y": 32, "x": 32}, {"y": 12, "x": 20, "member": 1})
    ]
    for name in runs[0].data_vars:
        np.testing.assert_array_equal(runs[0][name].values, runs[1][name].values)
        assert np.isfinite(runs[0][name].values).all()


def test_a_bf16_training_step_on_the_gpu_gives_finite_losses(tmp_path):
    from _train_helpers import synthetic_store, tiny_config

    from corrdiff_xr.config import TrainRunConfig, from_dict
    from corrdiff_xr.training import train

    store = synthetic_store(tmp_path / "d.zarr")
    cfg = tiny_config(store, tmp_path / "run", duration=8, device="cuda", precision="bf16",
                      deterministic=False)  # fmt: skip
    result = train(from_dict(TrainRunConfig, cfg))
    assert result.completed and math.isfinite(result.loss)


def test_bf16_sampling_on_the_gpu_moves_members_by_far_less_than_their_spread():
    """``SamplerConfig.precision='bf16'`` under CUDA autocast, on the demo's trained weights:
    members move (bf16 ran) by under 5 % of the ensemble spread (0.3-1.9 % on the CPU)."""
    from corrdiff_xr.data import open_pair, synthetic_dataset
    from corrdiff_xr.inference import downscale
    from corrdiff_xr.model import shipped_model_path

    pair = open_pair(synthetic_dataset(ny=64, nx=64, nt=1, factor=4, seed=3, chunks={"time": 1}))
    ens = {
        p: downscale(
            pair,
            str(shipped_model_path()),
            members=6,
            seed=5,
            device="cuda",
            sampler={"precision": p},
        ).compute(scheduler="sync")  # fmt: skip
        for p in ("fp32", "bf16")
    }
    for name in ens["fp32"].data_vars:
        a, b = ens["fp32"][name].values, ens["bf16"][name].values
        moved = float(np.sqrt(((b - a) ** 2).mean()))
        assert 0 < moved < 0.05 * float(a.std(axis=0, ddof=1).mean()), name
