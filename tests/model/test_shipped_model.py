"""The shipped tiny CorrDiff: compact fp16 file, fp32 model, built by the committed configs,
and a regression mean that beats bilinear interpolation on held-out data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr
from safetensors import safe_open

from corrdiff_xr import demo, scoring
from corrdiff_xr.config import EDMConfig, from_dict
from corrdiff_xr.dims import MEMBER
from corrdiff_xr.model import CorrDiff
from corrdiff_xr.training import CONFIG_DIR, load_run_config

TARGETS = ("t2m", "tp", "u10", "v10")


@pytest.fixture(scope="module")
def path():
    return demo.shipped_model_path()


def test_shipped_file_is_small_and_stores_fp16_tensors(path):
    assert path.stat().st_size < 5_000_000
    with safe_open(str(path), framework="pt") as f:
        names = f.keys()
        dtypes = {f.get_slice(k).get_dtype() for k in names}
    assert dtypes == {"F16"}


def test_shipped_model_loads_as_float32_with_both_networks_and_its_codec(path):
    model = CorrDiff.load(path)
    assert model.residual is not None
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert set(model.codec.out_channels) == set(TARGETS)
    assert set(model.codec.static) == {"orography", "lsm"}
    assert model.img_shape == (64, 64)
    with safe_open(str(path), framework="pt") as f:
        stored = f.get_tensor(
            "regression." + next(k for k, _ in model.regression.named_parameters())
        )
    first = next(model.regression.parameters())
    torch.testing.assert_close(first, stored.float(), rtol=0, atol=0)


def test_shipped_model_was_built_by_the_committed_tiny_configs(path):
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["corrdiff_xr"])
    reg = load_run_config(CONFIG_DIR / "tiny_regression.yaml")
    res = load_run_config(
        CONFIG_DIR / "tiny_diffusion.yaml", [f"training.regression_checkpoint={path}"]
    )
    model = CorrDiff.from_config_dict(header)
    assert model.regression_config == reg.network
    assert model.residual_config == res.network
    assert from_dict(EDMConfig, header["edm"]) == res.edm


def test_regression_mean_beats_bilinear_on_held_out_hours(path, tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "corrdiff_demo_cache"  # shared with test_demo
    pair = demo.open_demo_data(cache_dir=cache, times=3)
    assert pair.dataset.time.values.min() >= np.datetime64(demo.HELD_OUT_START, "ns")
    mean = pair.dataset.corrdiff.downscale(path, output="mean").compute()
    truth = pair.fine[list(TARGETS)].compute()
    base = demo.bilinear_baseline(pair, TARGETS).compute()
    mae_reg = scoring.mae(mean.expand_dims({MEMBER: 1}), truth)
    mae_bil = scoring.mae(base.expand_dims({MEMBER: 1}), truth)
    std = pair.stats.sel(stat="std")
    overall = lambda s: sum(float(s[v]) / float(std[v]) for v in TARGETS)
    assert overall(mae_reg) < overall(mae_bil)
    assert float(mae_reg["t2m"]) < float(mae_bil["t2m"])
    assert isinstance(mean, xr.Dataset) and set(mean.data_vars) == set(TARGETS)
