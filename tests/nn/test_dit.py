"""The DiT backbone (``network.arch: dit``): trained as CorrDiff's regression and patched
residual nets, saved, loaded and sampled; bf16 autocast; patch positions; its refusals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from _train_helpers import synthetic_store, tiny_config

from corrdiff_xr.config import ConfigError, NetworkConfig, TrainRunConfig, from_dict
from corrdiff_xr.data import open_pair
from corrdiff_xr.inference import downscale
from corrdiff_xr.model import CheckpointError, CorrDiff, read_checkpoint_header
from corrdiff_xr.nn import BACKBONES, DiT, build_network
from corrdiff_xr.nn.backbones import check_shape
from corrdiff_xr.nn.dit import _natten_na2d, _rotate, axial_rope, neighborhood_attention
from corrdiff_xr.training import train

TINY_DIT = {"patch_size": 4, "hidden_size": 32, "depth": 2, "num_heads": 4}
#: the residual net of the end-to-end run: 3x3 token windows and rotary positions
LOCAL_ROPE = {**TINY_DIT, "patch_size": 2, "attention": "neighborhood", "pos_embed": "rope"}


def _dit(**options) -> NetworkConfig:
    return NetworkConfig(arch="dit", options={**TINY_DIT, **options}, dropout=0.0)


def _random_dit(cfg=None, *, shape=(16, 16), seed=0) -> DiT:
    """A DiT with O(1) random weights (a fresh one outputs zeros: adaLN-Zero)."""
    torch.manual_seed(seed)
    net = DiT(cfg or _dit(), in_channels=5, out_channels=2, img_shape=shape)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * (0.3 / p[0].numel() ** 0.5 if p.ndim > 1 else 0.3))
    return net.eval()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("data") / "syn.zarr")


def _dit_run(store, out, options, **kw):
    data = tiny_config(store, out, duration=12, **kw)  # 3 steps: adaLN-Zero leaves zeros
    data["network"].update(arch="dit", options=options)
    if data["task"] == "patched_diffusion":
        data["patch"] = {"shape": [8, 8]}
    return from_dict(TrainRunConfig, data)


@pytest.fixture(scope="module")
def dit_runs(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("dit")
    reg = train(_dit_run(store, out / "reg", TINY_DIT))
    reg_file = reg.output_dir / "model.safetensors"
    diff = train(
        _dit_run(
            store,
            out / "diff",
            LOCAL_ROPE,
            task="patched_diffusion",
            regression_checkpoint=str(reg_file),
        )
    )
    return reg, diff


def test_dit_is_in_the_backbone_table():
    assert BACKBONES["dit"].build is DiT
    net = build_network(_dit(), in_channels=5, out_channels=2, img_shape=(16, 16))
    assert (net.in_channels, net.out_channels, net.dtype) == (5, 2, torch.float32)
    x = torch.randn(2, 5, 16, 16)
    assert torch.equal(net(x, torch.ones(2)), torch.zeros(2, 2, 16, 16))  # adaLN-Zero start


def test_a_dit_corrdiff_trains_saves_loads_and_samples(store, dit_runs):
    reg, diff = dit_runs
    assert reg.completed and diff.completed and np.isfinite([reg.loss, diff.loss]).all()
    path = diff.output_dir / "model.safetensors"
    header = read_checkpoint_header(path)
    for key, options in (("regression_network", TINY_DIT), ("residual_network", LOCAL_ROPE)):
        assert (header[key]["arch"], header[key]["options"]) == ("dit", options)
    model = CorrDiff.load(path)
    assert isinstance(model.regression.net, DiT) and isinstance(model.residual.net, DiT)
    assert model.residual.net.blocks[0].modulation.weight.abs().sum() > 0  # trained off zero
    pair = open_pair(str(store))
    whole = downscale(pair.isel(time=[1]), str(path), members=2, seed=3, steps=2)
    tiled = downscale(
        pair.isel(time=[1]), str(path), members=2, seed=3, steps=2, patch=8, overlap=4
    )
    for out in (whole, tiled):
        t2m = out.t2m.compute(scheduler="sync").values
        assert t2m.shape == (2, 1, 16, 16) and np.isfinite(t2m).all()
        assert not np.allclose(t2m[0], t2m[1])  # the noise reaches the DiT


def test_a_dit_header_whose_options_do_not_fit_the_weights_is_refused(dit_runs):
    header = CorrDiff.load(dit_runs[1].output_dir / "model.safetensors").config_dict()
    header["residual_network"]["options"] = {**LOCAL_ROPE, "depth": 10**6}
    with pytest.raises(CheckpointError, match=r"residual_network.options.depth=1000000 must be"):
        CorrDiff.from_config_dict(header)


@pytest.mark.parametrize("options", [{}, LOCAL_ROPE], ids=["global", "local_rope"])
def test_bf16_autocast_on_the_cpu_is_close_to_fp32(options):
    net = _random_dit(_dit(**options))
    x = torch.randn(2, 5, 16, 16)
    labels = torch.tensor([-1.5, 1.2])
    with torch.no_grad():
        exact = net(x, labels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = net(x, labels)
    assert fast.dtype == torch.bfloat16
    # bf16 keeps 8 mantissa bits (0.4 % per rounding); measured 0.3-0.5 % of the output scale
    err = (fast.float() - exact).abs().max() / exact.abs().max()
    assert 0 < err < 0.015, err


def test_patch_tokens_take_the_positions_of_their_global_tokens():
    net = _random_dit()
    grid = net.pos_embed[0].reshape(4, 4, -1)  # 16x16 pixels in 4x4 patches
    offsets = torch.tensor([[4, 8], [0, 0]])
    pos = net._positions(offsets, 2, 8, 8)
    assert torch.equal(pos[0], grid[1:3, 2:4].reshape(4, -1))
    assert torch.equal(pos[1], grid[0:2, 0:2].reshape(4, -1))
    x = torch.randn(1, 5, 16, 16)
    with torch.no_grad():  # the whole grid at offset 0 is the whole grid
        torch.testing.assert_close(
            net(x, torch.ones(1), offsets=torch.zeros(1, 2, dtype=torch.long)),
            net(x, torch.ones(1)),
            atol=0,
            rtol=0,
        )


def test_checkpointed_blocks_give_the_same_gradients():
    plain = _random_dit().train()
    saved = _random_dit(dataclasses.replace(_dit(), checkpoint_activations=True)).train()
    x = torch.randn(2, 5, 16, 16)
    for net in (plain, saved):
        net(x, torch.tensor([0.1, 2.0])).square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), saved.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_a_grid_the_patches_do_not_tile_is_refused_in_one_line():
    with pytest.raises(ConfigError) as err:
        check_shape(_dit(), (18, 16), "patch")
    assert "\n" not in str(err.value)
    assert "patch 18x16 (y, x) is not a multiple of the DiT patch_size 4x4" in str(err.value)
    assert "crop it to 16x16" in str(err.value)
    check_shape(_dit(patch_size=[2, 8]), (18, 16), "patch")  # rectangular patches tile it


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"patch": 4}, r"network.options \['patch'\] are not taken by arch 'dit'"),
        ({"patch_size": 0}, r"network.options.patch_size=0 must be an integer or \[rows, cols\]"),
        ({"patch_size": [2, 2, 2]}, r"network.options.patch_size=\[2, 2, 2\]"),
        ({"depth": 2.5}, r"network.options.depth=2.5 must be an integer in \[1, 128\]"),
        ({"num_heads": 3}, r"network.options.hidden_size=32 must be even and divisible by"),
        ({"mlp_ratio": 100.0}, r"network.options.mlp_ratio=100.0 must be a number in"),
        ({"qk_norm": "l2"}, r"network.options.qk_norm='l2' must be one of"),
        ({"pos_embed": "sincos"}, r"network.options.pos_embed='sincos' must be one of"),
        ({"attention": "local"}, r"network.options.attention='local' must be one of"),
        ({"attn_kernel": 4}, r"network.options.attn_kernel=4 must be odd"),
        ({"attn_kernel": 0}, r"network.options.attn_kernel=0 must be an integer in \[1, 255\]"),
        (
            {"pos_embed": "rope", "hidden_size": 24},
            r"network.options.pos_embed='rope' needs a head size .* 6\) divisible by 4",
        ),
    ],
)
def test_bad_options_are_refused_in_one_line_naming_the_key(change, message):
    with pytest.raises(ConfigError, match=message) as err:
        build_network(_dit(**change), in_channels=5, out_channels=2, img_shape=(16, 16))
    assert "\n" not in str(err.value)


def test_a_dit_takes_no_lead_time():
    cfg = dataclasses.replace(_dit(), lead_time_channels=4)
    with pytest.raises(ConfigError, match=r"network.lead_time_channels=4: arch 'dit' takes no"):
        build_network(cfg, in_channels=5, out_channels=2, img_shape=(16, 16))
    with pytest.raises(ValueError, match="takes no lead time"):
        _random_dit()(torch.randn(1, 5, 16, 16), torch.ones(1), lead_time=torch.ones(1))


def _qkv(h, w, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 4, h * w, 8, generator=g).to(device) for _ in range(3)]


@pytest.mark.parametrize(("grid", "kernel"), [((4, 6), 7), ((5, 5), 5), ((3, 8), 255)])
def test_a_window_covering_the_grid_is_global_attention(grid, kernel):
    q, k, v = _qkv(*grid)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(neighborhood_attention(q, k, v, grid, kernel), want)


@pytest.mark.parametrize("pos_embed", ["learnable", "rope"])
def test_a_dit_whose_windows_cover_the_grid_equals_the_global_one(pos_embed):
    net = _random_dit(_dit(pos_embed=pos_embed))
    local = DiT(
        _dit(attention="neighborhood", attn_kernel=5, pos_embed=pos_embed),
        in_channels=5,
        out_channels=2,
        img_shape=(16, 16),
    )
    local.load_state_dict(net.state_dict())  # same weights: attention is the only difference
    x = torch.randn(2, 5, 16, 16)
    with torch.no_grad():  # 4x4 tokens in 5x5 windows
        torch.testing.assert_close(local.eval()(x, torch.ones(2)), net(x, torch.ones(2)))


def test_neighborhood_attention_ignores_tokens_outside_the_window():
    q, k, v = _qkv(6, 6)
    out = neighborhood_attention(q, k, v, (6, 6), 3)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 5 * 6 + 5] += 10.0  # the far corner token, outside token (0, 0)'s 3x3 window
    v2[:, :, 5 * 6 + 5] += 10.0
    moved = neighborhood_attention(q, k2, v2, (6, 6), 3)
    torch.testing.assert_close(moved[:, :, 0], out[:, :, 0], atol=0, rtol=0)
    assert (moved[:, :, 5 * 6 + 5] - out[:, :, 5 * 6 + 5]).abs().max() > 1


@pytest.mark.skipif(
    _natten_na2d() is None or not torch.cuda.is_available(), reason="needs NATTEN and CUDA"
)
def test_natten_and_the_plain_path_give_the_same_numbers():
    net = _random_dit(_dit(attention="neighborhood", patch_size=2)).cuda()
    x = torch.randn(2, 5, 16, 16, device="cuda")
    with torch.no_grad():
        fused = net(x, torch.ones(2, device="cuda"))
        q, k, v = _qkv(8, 8, device="cuda")
        plain = neighborhood_attention(q, k, v, (8, 8), 3)
        nat = [t.transpose(1, 2).reshape(2, 8, 8, 4, 8) for t in (q, k, v)]
        natten = _natten_na2d()(*nat, kernel_size=3).reshape(2, 64, 4, 8).transpose(1, 2)
    torch.testing.assert_close(natten, plain, atol=1e-5, rtol=0)
    assert torch.isfinite(fused).all()


def test_rotary_scores_depend_only_on_token_differences():
    """Why a patch needs no offset with ``pos_embed: rope``: a query at token p and a key at
    token q score the same as at p + d and q + d, for shifts along rows and columns."""
    grid, head_dim = (6, 7), 8
    rope = axial_rope(grid, head_dim)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, head_dim, generator=g)
    turned_q = _rotate(q.expand(42, -1), rope)  # the same vector placed at every token
    turned_k = _rotate(k.expand(42, -1), rope)

    def score(p, r):
        return turned_q[p[0] * 7 + p[1]] @ turned_k[r[0] * 7 + r[1]]

    for d in ((1, 0), (0, 3), (2, 2)):
        torch.testing.assert_close(
            score((1, 2), (3, 1)), score((1 + d[0], 2 + d[1]), (3 + d[0], 1 + d[1]))
        )
    assert (score((0, 0), (0, 1)) - score((0, 0), (0, 4))).abs() > 1e-3  # position matters
    net = _random_dit(_dit(pos_embed="rope", patch_size=2))
    x = torch.randn(1, 5, 8, 8)
    with torch.no_grad():
        here = net(x, torch.ones(1), offsets=torch.tensor([[0, 0]]))
        there = net(x, torch.ones(1), offsets=torch.tensor([[6, 4]]))
    torch.testing.assert_close(here, there, atol=0, rtol=0)
