"""Odd grids: the network pads to the multiple its levels halve, and crops back.

A three-level network needs sides divisible by 4; 15 x 21 divides by neither. Padding is the
network's own (``NetworkConfig.padding``), so training, validation and inference (whole,
patched, the whole-domain mean of patched sampling) all go through it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from corrdiff_xr import edm
from corrdiff_xr.config import ConfigError, NetworkConfig
from corrdiff_xr.nn import SongUNet
from corrdiff_xr.nn.padding import crop, pad_to_multiple
from corrdiff_xr.testing import TINY_NETWORK, tiny_corrdiff

THREE = dataclasses.replace(TINY_NETWORK, channel_mult=(1, 2, 2), attn_resolutions=())
ODD = (15, 21)  # 16 x 24 after padding to multiples of 4


def _net(padding: str, *, grid: bool = True, shape: tuple[int, int] = ODD) -> SongUNet:
    cfg = dataclasses.replace(THREE, padding=padding)
    if not grid:
        cfg = dataclasses.replace(cfg, gridtype="none", N_grid_channels=0)
    torch.manual_seed(0)
    return SongUNet(cfg, in_channels=3, out_channels=2, img_shape=shape).eval()


def test_reflect_padding_mirrors_like_torch_and_further_and_crop_undoes_it():
    x = torch.randn(2, 3, 15, 21)
    padded = pad_to_multiple(x, 4, "reflect")
    assert padded.shape[-2:] == (16, 24)
    torch.testing.assert_close(padded, F.pad(x, (0, 3, 0, 1), mode="reflect"), rtol=0, atol=0)
    assert torch.equal(crop(padded, (15, 21)), x)
    assert torch.equal(pad_to_multiple(x, 4, "zero")[..., 15:, :], torch.zeros(2, 3, 1, 24))
    # a pad longer than the side keeps mirroring (F.pad refuses it); one pixel repeats
    tiny = torch.arange(3.0).reshape(1, 1, 1, 3)
    assert pad_to_multiple(tiny, 8, "reflect")[0, 0, 0].tolist() == [0, 1, 2, 1, 0, 1, 2, 1]
    assert pad_to_multiple(tiny, 8, "reflect").shape == (1, 1, 8, 8)
    fits = x[..., :12, :8]
    assert all(pad_to_multiple(fits, 4, mode) is fits for mode in ("reflect", "zero", "none"))
    with pytest.raises(ValueError, match=r"15x21 .*divisible by 4.*'reflect' or 'zero'.*12x20"):
        pad_to_multiple(x, 4, "none")


def test_a_grid_that_fits_is_not_padded_so_output_is_bit_identical():
    x = torch.randn(2, 3, 16, 24)
    noise = torch.ones(2)
    none, reflect = _net("none", shape=(16, 24)), _net("reflect", shape=(16, 24))
    with torch.no_grad():
        assert torch.equal(none(x, noise), reflect(x, noise))


@pytest.mark.parametrize("padding", ["reflect", "zero"])
def test_an_odd_grid_is_the_crop_of_the_network_on_the_padded_grid(padding):
    x = torch.randn(2, 3, *ODD)
    noise = torch.ones(2)
    net, plain = _net(padding, grid=False), _net("none", grid=False)
    with torch.no_grad():
        out = net(x, noise)
        want = plain(pad_to_multiple(x, 4, padding), noise)[..., :15, :21]
    assert out.shape == (2, 2, *ODD)
    assert torch.equal(out, want)


def test_the_loss_on_an_odd_grid_counts_only_its_own_pixels():
    """Equal to the loss on the padded grid with the padded targets masked out (NaN)."""
    codec_free = {"in_channels": 3, "out_channels": 2, "residual_network": None}
    reg = dataclasses.replace(THREE, embedding_type="zero", gridtype="none", N_grid_channels=0)
    torch.manual_seed(0)
    from corrdiff_xr.model import CorrDiff

    odd = CorrDiff(img_shape=ODD, regression_network=reg, **codec_free)
    plain = CorrDiff(
        img_shape=ODD, regression_network=dataclasses.replace(reg, padding="none"), **codec_free
    )
    plain.load_state_dict(odd.state_dict())
    x, y = torch.randn(2, 3, *ODD), torch.randn(2, 2, *ODD)
    y_padded = F.pad(y, (0, 3, 0, 1), value=float("nan"))  # padded pixels: missing targets
    losses = {
        r: (
            edm.regression_loss(odd.predict_mean, x, y, reduction=r),
            edm.regression_loss(
                plain.predict_mean, pad_to_multiple(x, 4, "reflect"), y_padded, reduction=r
            ),
        )
        for r in ("mean", "sum_per_sample")
    }
    got, want = losses["mean"]
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    # a sum counts the grid's own 15 x 21 pixels, not the 16 x 24 of the padded one
    got_sum, want_sum = losses["sum_per_sample"]
    torch.testing.assert_close(got_sum, want_sum * (15 * 21) / (16 * 24), rtol=1e-5, atol=0)
    got.backward()  # gradients flow through the padding
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in odd.parameters())


def test_padding_none_keeps_the_refusal_naming_the_shape_that_works():
    cfg = dataclasses.replace(THREE, padding="none")
    with pytest.raises(ConfigError, match=r"15x21 \(y, x\) does not divide by 4.*crop it to 12x20"):
        cfg.check_shape(ODD, "the fine grid")
    THREE.check_shape(ODD, "the fine grid")  # reflect (the default): let through
    with pytest.raises(ValueError, match=r"3 levels needs h and w divisible by 4"):
        _net("none")(torch.randn(1, 3, *ODD), torch.ones(1))
    assert NetworkConfig().padding == "reflect"


def test_checkpoints_record_padding_and_old_headers_load_with_the_default(tmp_path):
    from corrdiff_xr.model import CorrDiff

    model = CorrDiff(
        img_shape=ODD,
        in_channels=3,
        out_channels=2,
        regression_network=dataclasses.replace(THREE, padding="zero", embedding_type="zero"),
        residual_network=dataclasses.replace(THREE, padding="none"),
    )
    back = CorrDiff.load(model.save(tmp_path / "m.safetensors"))
    assert back.regression_config.padding == "zero"
    assert back.residual_config.padding == "none"
    header = model.config_dict()
    for key in ("regression_network", "residual_network"):
        del header[key]["padding"]  # written before the setting existed
    assert CorrDiff.from_config_dict(header).regression_config.padding == "reflect"


# -- end to end: training and downscaling on an odd grid ------------------------------------


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory):
    from corrdiff_xr.data import open_pair, synthetic_dataset

    ds = synthetic_dataset(ny=15, nx=21, nt=4, factor=3, seed=1, chunks={"time": 1})
    return ds, open_pair(ds)


def test_training_and_downscaling_an_odd_grid_gives_finite_values_on_it(tmp_path, odd_data):
    from corrdiff_xr.config import TrainRunConfig, from_dict
    from corrdiff_xr.inference import downscale
    from corrdiff_xr.model import read_checkpoint_header
    from corrdiff_xr.training import train
    from tests._train_helpers import tiny_config

    ds, _ = odd_data
    store = tmp_path / "odd.zarr"
    ds.to_zarr(store)
    data = tiny_config(str(store), tmp_path / "run", duration=4, total_batch_size=2)
    data["network"]["channel_mult"] = [1, 2, 2]
    result = train(from_dict(TrainRunConfig, data))
    assert result.completed and np.isfinite(result.loss)
    reg = tmp_path / "run" / "model.safetensors"
    assert read_checkpoint_header(reg)["regression_network"]["padding"] == "reflect"
    data = tiny_config(
        str(store), tmp_path / "diff", task="diffusion", duration=4, total_batch_size=2
    )
    data["network"]["channel_mult"] = [1, 2, 2]
    data["training"]["regression_checkpoint"] = str(reg)
    result = train(from_dict(TrainRunConfig, data))
    assert result.completed and np.isfinite(result.loss)
    # odd patches of the odd grid too
    patched = {**data, "task": "patched_diffusion", "patch": {"shape": [7, 9]}}
    patched["training"] = {**data["training"], "output_dir": str(tmp_path / "patched")}
    result = train(from_dict(TrainRunConfig, patched))
    assert result.completed and np.isfinite(result.loss)
    out = downscale(ds, tmp_path / "diff" / "model.safetensors", members=2, steps=2)
    out = out.compute(scheduler="sync")
    assert out.t2m.shape[-2:] == ODD
    assert all(np.isfinite(out[v].values).all() for v in out.data_vars)


def test_odd_grid_downscaling_is_independent_of_chunking_whole_and_patched(odd_data):
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.inference import downscale

    _, pair = odd_data
    model = tiny_corrdiff(Codec.from_pair(pair), ODD, channel_mult=(1, 2, 2), attn_resolutions=())
    run = dict(members=2, seed=3, steps=2)
    pair = pair.isel(time=[1])  # one time is enough
    whole = downscale(pair, model, **run).compute(scheduler="sync")
    assert whole.t2m.shape[-2:] == ODD and np.isfinite(whole.t2m.values).all()
    patched = [
        downscale(pair, model, patch=(7, 9), overlap=2, chunks=chunks, **run).compute(
            scheduler="sync"
        )
        for chunks in ({"y": 15, "x": 21}, {"y": 8, "x": 10})
    ]
    for name in whole.data_vars:
        assert np.isfinite(patched[0][name].values).all()
        np.testing.assert_array_equal(patched[0][name].values, patched[1][name].values)
        assert not np.array_equal(whole[name].values, patched[0][name].values)
