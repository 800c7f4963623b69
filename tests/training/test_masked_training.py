"""Training on land-only targets: NaN over the sea (a fixed mask) and outside a moving
coverage (time-varying) train with the masked loss, from the Zarr store to validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _train_helpers import tiny_config

from corrdiff_xr.config import TrainRunConfig, from_dict
from corrdiff_xr.data import synthetic_dataset
from corrdiff_xr.dims import TIME
from corrdiff_xr.model import CorrDiff
from corrdiff_xr.training import train

N = 16


@pytest.fixture(scope="module")
def land_only(tmp_path_factory):
    ds = synthetic_dataset(ny=N, nx=N, nt=8, factor=4, chunks={TIME: 2}).load()
    sea = np.zeros((N, N), dtype=bool)
    sea[:, : N // 2] = True
    ds["t2m"] = ds["t2m"].where(~sea)  # land-only temperature, as NDFD
    coverage = np.random.default_rng(0).random(ds["tp"].shape) < 0.3
    ds["tp"] = ds["tp"].where(~coverage)  # radar precipitation with gaps that move
    path = tmp_path_factory.mktemp("land") / "land.zarr"
    ds.chunk({TIME: 2}).to_zarr(str(path), mode="w")
    return str(path), ds, sea


def test_land_only_targets_train_regression_then_patched_diffusion(land_only, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store, ds, sea = land_only
    reg = train(from_dict(TrainRunConfig, tiny_config(store, tmp_path / "reg", duration=8)))
    assert reg.completed and reg.skipped_steps == 0 and math.isfinite(reg.loss)
    model = CorrDiff.load(reg.output_dir / "model.safetensors")
    # statistics over the valid pixels only (population std, as compute_stats)
    land = ds["t2m"].values[:, ~sea]
    mean, std = model.codec.stats["t2m"]
    assert mean == pytest.approx(float(land.mean()), rel=1e-6)
    assert std == pytest.approx(float(land.std()), rel=1e-5)
    assert all(np.isfinite(v.numpy()).all() for v in model.state_dict().values())
    # the model remembers the pixels it was trained on: the sea, and any pixel never covered
    want = np.stack([ds[n].notnull().any(TIME).values for n in model.codec.out_channels])
    np.testing.assert_array_equal(model.target_mask.numpy(), want)
    assert not want[model.codec.out_channels.index("t2m")][sea].any()
    # a longer run resumes from the checkpoint, mask included (not recomputed)
    longer = tiny_config(store, tmp_path / "reg", duration=12)
    again = train(from_dict(TrainRunConfig, longer))
    assert again.completed and again.nimg == 12
    resumed = CorrDiff.load(again.output_dir / "model.safetensors")
    np.testing.assert_array_equal(resumed.target_mask.numpy(), want)

    data = tiny_config(
        store,
        tmp_path / "diff",
        task="patched_diffusion",
        regression_checkpoint=str(reg.output_dir / "model.safetensors"),
        patch_num=2,
    )
    data["patch"] = {"shape": [8, 8]}
    data["data"]["valid_period"] = ["2020-01-01T06", "2020-01-01T07"]
    diff = train(from_dict(TrainRunConfig, data))
    assert diff.completed and diff.skipped_steps == 0 and math.isfinite(diff.loss)
    events = EventAccumulator(str(tmp_path / "diff" / "tensorboard"))
    events.Reload()
    # validation scores skip the missing truth instead of turning NaN
    for tag in ("valid/mae/t2m", "valid/crps/t2m", "valid/crps/tp"):
        assert math.isfinite(events.Scalars(tag)[-1].value), tag

    # generated members and means are NaN exactly where the model saw no target
    full = CorrDiff.load(diff.output_dir / "model.safetensors")
    np.testing.assert_array_equal(full.target_mask.numpy(), want)
    out = ds.isel(time=slice(6, 8)).corrdiff.downscale(
        full, members=2, seed=1, steps=2, patch=8, output="residual"
    )
    mean = ds.isel(time=slice(6, 8)).corrdiff.downscale(full, output="mean")
    for name, valid in zip(full.codec.out_channels, want):
        for arr in (out[name].values, mean[name].values):
            assert np.isnan(arr[..., ~valid]).all() and np.isfinite(arr[..., valid]).all(), name
