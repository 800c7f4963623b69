"""Our weights in the reference: the shipped model run by PhysicsNeMo's own sampler.

The sampling benchmark times the reference's 18-step Heun on the shipped model's weights
(benchmarks/_reference_sampler.py); that is only a like-for-like baseline if the copied
networks are the same function and the reference's members are ours.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from physicsnemo_ref import requires_physicsnemo

from corrdiff_xr.config import SamplerConfig

pytestmark = requires_physicsnemo
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


@pytest.fixture(scope="module")
def shipped():
    from corrdiff_xr.model import CorrDiff, shipped_model_path

    return CorrDiff.load(shipped_model_path()).eval()


def test_copied_networks_compute_ours(shipped):
    from _reference_sampler import reference_networks

    rr, rd = reference_networks(shipped)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, shipped.in_channels, *shipped.img_shape, generator=g)
    y = torch.randn(2, shipped.out_channels, *shipped.img_shape, generator=g)
    sigma = torch.tensor([0.7, 20.0])
    with torch.no_grad():
        mean = shipped.predict_mean(x)
        ref_mean = rr(torch.zeros_like(y), x)
        cond = torch.cat([mean, x], dim=1)
        den = shipped.residual(y, sigma, condition=cond)
        ref_den = rd(y, cond, sigma)
    assert torch.allclose(mean, ref_mean, atol=1e-5)
    assert torch.allclose(den, ref_den.float(), atol=1e-5)
    assert mean.abs().max() > 0.1  # real weights, not a zero network


def test_reference_members_are_ours(shipped):
    from _reference_sampler import reference_ensemble

    from corrdiff_xr import demo

    pair = demo.open_demo_data(times=1)
    sampler = SamplerConfig(solver="heun", num_steps=10, sigma_max=800.0)
    ref, wall = reference_ensemble(shipped, pair, members=2, sampler=sampler)
    ours = (
        pair.dataset.load()
        .corrdiff.downscale(shipped, members=2, seed=0, sampler=sampler)
        .compute()
    )
    for name in ref.data_vars:
        a, b = ref[name].values, ours[name].transpose(*ref[name].dims).values
        assert np.abs(a - b).max() <= 1e-3 * float(np.abs(b).max())
        # the members differ from each other: the comparison is not of two means
        assert np.abs(a[0] - a[1]).max() > 1e-2 * float(np.abs(b).max())
    assert wall > 0
