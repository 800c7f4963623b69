"""Networks: layers against their textbook formulas, embeddings, patches at offsets, shapes."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from corrdiff_xr.config import ConfigError, NetworkConfig, from_dict
from corrdiff_xr.nn import (
    Attention,
    Conv2d,
    GridEmbedding,
    GroupNorm,
    LeadTimeEmbedding,
    NoiseEmbedding,
    RegressionUNet,
    SongUNet,
)
from corrdiff_xr.nn.layers import dropout
from corrdiff_xr.testing import TINY_NETWORK as TINY


def _randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            fan_in = p[0].numel() if p.ndim > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 / math.sqrt(fan_in))
    return module


# -- layers -------------------------------------------------------------------------------
def test_box_downsampling_equals_depthwise_filter_convolution():
    x = torch.randn(2, 3, 8, 6)
    conv = Conv2d(3, 3, 0, down=True)
    f = torch.full((3, 1, 2, 2), 0.25)
    torch.testing.assert_close(conv(x), F.conv2d(x, f, groups=3, stride=2), atol=1e-6, rtol=0)


def test_box_upsampling_equals_transposed_filter_convolution():
    x = torch.randn(2, 3, 4, 5)
    conv = Conv2d(3, 3, 0, up=True)
    f = torch.ones(3, 1, 2, 2)
    torch.testing.assert_close(
        conv(x), F.conv_transpose2d(x, f, groups=3, stride=2), atol=1e-6, rtol=0
    )


def test_smooth_resample_filter_keeps_a_constant_field_constant_inside():
    x = torch.full((1, 2, 8, 8), 3.0)
    down = Conv2d(2, 2, 0, down=True, resample_filter=(1, 3, 3, 1))(x)
    up = Conv2d(2, 2, 0, up=True, resample_filter=(1, 3, 3, 1))(x)
    assert down.shape == (1, 2, 4, 4) and up.shape == (1, 2, 16, 16)
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.full((1, 2, 2, 2), 3.0))
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.full((1, 2, 12, 12), 3.0))


def test_group_norm_in_eval_uses_unbiased_variance_and_biased_in_training():
    gn = GroupNorm(8, eps=1e-6)
    with torch.no_grad():
        gn.weight.copy_(torch.linspace(0.5, 2.0, 8))
        gn.bias.copy_(torch.linspace(-1, 1, 8))
    x = torch.randn(3, 8, 5, 7) * 2 + 1
    g = x.reshape(3, 2, 4, 5, 7)
    for unbiased, mode in ((True, gn.eval), (False, gn.train)):
        mode()
        var = g.var(dim=(2, 3, 4), unbiased=unbiased, keepdim=True)
        ref = ((g - g.mean(dim=(2, 3, 4), keepdim=True)) / (var + 1e-6).sqrt()).reshape(3, 8, 5, 7)
        ref = ref * gn.weight[:, None, None] + gn.bias[:, None, None]
        torch.testing.assert_close(gn(x), ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_cpu_dropout_keeps_1_minus_p_scales_by_its_inverse_and_keeps_the_layout(dtype, layout):
    torch.manual_seed(0)
    p = 0.13
    x = (torch.rand(4, 32, 64, 64) + 0.5).to(dtype).contiguous(memory_format=layout)
    x.requires_grad_(True)
    y = dropout(x, p, training=True)
    kept = y != 0
    n = kept.numel()
    # binomial(n, 1 - p): five standard deviations is 1.2e-3 here
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    expected = x.detach() * (1 / (1 - p))
    torch.testing.assert_close(y[kept], expected[kept])
    assert y.is_contiguous(memory_format=layout) and y.dtype == dtype
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(x.grad, torch.where(kept, g * (1 / (1 - p)), 0).to(dtype))
    # channels are not correlated: the per-channel keep rates spread like independent draws
    per_channel = kept.float().mean(dim=(0, 2, 3))
    assert per_channel.std().item() < 3 * math.sqrt(p * (1 - p) / (n / 32))


def test_dropout_is_the_identity_in_eval_or_at_zero_and_follows_the_torch_seed():
    x = torch.randn(2, 8, 16, 16)
    assert dropout(x, 0.5, training=False) is x and dropout(x, 0.0, training=True) is x
    torch.manual_seed(3)
    a = dropout(x, 0.3, training=True)
    torch.manual_seed(3)
    b = dropout(x, 0.3, training=True)
    assert torch.equal(a, b) and not torch.equal(a, dropout(x, 0.3, training=True))
    assert torch.equal(dropout(x, 1.0, training=True), torch.zeros_like(x))
    strided = x[:, :, ::2]  # not dense: falls back to F.dropout, same contract
    assert ((dropout(strided, 0.3, training=True) == 0).float().mean() - 0.3).abs() < 0.05


def test_attention_equals_softmax_of_scaled_dot_products():
    att = _randomize(Attention(8, num_heads=1))
    att.eval()
    x = torch.randn(2, 8, 3, 4)
    qkv = att.qkv(att.norm(x)).reshape(2, 8, 3, 12)  # (n, c, {q,k,v}, pixels)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    w = torch.softmax(torch.einsum("ncq,nck->nqk", q, k) / math.sqrt(8), dim=2)
    a = torch.einsum("nqk,nck->ncq", w, v).reshape(2, 8, 3, 4)
    torch.testing.assert_close(att(x), att.proj(a) + x, atol=1e-5, rtol=0)


# -- embeddings ---------------------------------------------------------------------------
def test_noise_embedding_of_zero_is_zeros_then_ones():
    emb = NoiseEmbedding(8)(torch.zeros(2))
    torch.testing.assert_close(emb, torch.cat([torch.zeros(2, 4), torch.ones(2, 4)], dim=1))


@pytest.mark.parametrize(
    "gridtype,channels",
    [
        ("sinusoidal", 4),
        ("sinusoidal", 8),
        ("sinusoidal_octave", 8),
        ("linear", 2),
        ("learnable", 5),
    ],
)
def test_grid_embedding_at_an_offset_is_the_slice_of_the_full_grid(gridtype, channels):
    grid = GridEmbedding((12, 20), gridtype=gridtype, channels=channels)
    full = grid(None, (12, 20), 1)
    offsets = torch.tensor([[0, 0], [4, 10], [8, 16]])
    patches = grid(offsets, (4, 4), 3)
    for i, (r, c) in enumerate(offsets.tolist()):
        torch.testing.assert_close(patches[i], full[0, :, r : r + 4, c : c + 4])


def test_sinusoidal_grid_has_known_values_and_mirrors_positions_beyond_the_domain():
    grid = GridEmbedding((5, 9), gridtype="sinusoidal", channels=4)
    emb = grid(torch.tensor([[-2, 7]]), (4, 4), 1)[0]  # rows -2..1, cols 7..10 (beyond 8)
    # mirrored about the end pixels like reflect-padded data: -2,-1 -> 2,1 and 9,10 -> 7,6
    rows = torch.tensor([2, 1, 0, 1], dtype=torch.float64) * 2 * math.pi / 4
    cols = torch.tensor([7, 8, 7, 6], dtype=torch.float64) * 2 * math.pi / 8
    expected = torch.stack(
        [
            cols.sin()[None, :].expand(4, 4),
            rows.sin()[:, None].expand(4, 4),
            cols.cos()[None, :].expand(4, 4),
            rows.cos()[:, None].expand(4, 4),
        ]
    ).float()
    torch.testing.assert_close(emb, expected, atol=1e-6, rtol=0)


def test_learnable_grid_mirrors_patches_that_run_past_the_domain():
    grid = GridEmbedding((8, 8), gridtype="learnable", channels=2)
    got = grid(torch.tensor([[6, -1]]), (4, 4), 1)[0]
    rows, cols = torch.tensor([6, 7, 6, 5]), torch.tensor([1, 0, 1, 2])
    torch.testing.assert_close(got, grid.weight.detach()[:, rows[:, None], cols[None, :]])


def test_full_grid_embedding_needs_offsets_for_smaller_inputs():
    with pytest.raises(ValueError, match="pass offsets"):
        GridEmbedding((8, 8))(None, (4, 4), 1)


def test_lead_time_embedding_selects_each_samples_lead_time_and_patch():
    lt = LeadTimeEmbedding((6, 8), steps=3, channels=2)
    out = lt(torch.tensor([2, 0]), torch.tensor([[1, 2], [0, 4]]), (4, 4))
    torch.testing.assert_close(out[0], lt.weight[2, :, 1:5, 2:6].detach())
    torch.testing.assert_close(out[1], lt.weight[0, :, 0:4, 4:8].detach())
    with pytest.raises(ValueError, match="lead_time labels"):
        lt(torch.tensor([3]), None, (6, 8))


# -- SongUNet -----------------------------------------------------------------------------
def test_songunet_handles_non_square_images_and_checks_divisibility():
    net = SongUNet(TINY, in_channels=3, out_channels=2, img_shape=(8, 24))
    out = net(torch.randn(2, 3, 8, 24), torch.ones(2))
    assert out.shape == (2, 2, 8, 24)
    strict = SongUNet(
        dataclasses.replace(TINY, padding="none"), in_channels=3, out_channels=2, img_shape=(8, 24)
    )  # the default pads instead (tests/test_padding.py)
    with pytest.raises(ValueError, match="divisible by 2"):
        strict(torch.randn(1, 3, 8, 23), torch.ones(1), offsets=torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"\(N, 3, h, w\)"):
        net(torch.randn(1, 4, 8, 24), torch.ones(1))


def test_attention_levels_follow_the_global_grid_height():
    net = SongUNet(
        dataclasses.replace(TINY, attn_resolutions=(8,)),
        in_channels=1,
        out_channels=1,
        img_shape=(16, 16),
    )
    assert net.enc["L0_block0"].attn is None and net.enc["L1_block0"].attn is not None
    assert net.dec["L1_in0"].attn is not None  # bottleneck attention


def test_patch_with_zero_offset_over_the_whole_grid_equals_the_unpatched_call():
    net = _randomize(
        SongUNet(
            dataclasses.replace(TINY, gridtype="learnable", N_grid_channels=3),
            in_channels=2,
            out_channels=2,
            img_shape=(8, 16),
        )
    ).eval()
    x = torch.randn(2, 2, 8, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            net(x, torch.ones(2), offsets=torch.zeros(2, 2, dtype=torch.long)),
            net(x, torch.ones(2)),
        )


def test_patch_position_changes_the_output_through_the_grid_embedding():
    net = _randomize(SongUNet(TINY, in_channels=2, out_channels=2, img_shape=(16, 16))).eval()
    x = torch.randn(1, 2, 8, 8).expand(2, -1, -1, -1)
    with torch.no_grad():
        out = net(x, torch.ones(2), offsets=torch.tensor([[0, 0], [8, 8]]))
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_channels_last_gives_the_same_outputs_and_gradients():
    cfg = dataclasses.replace(TINY, channels_last=False)
    a = _randomize(SongUNet(cfg, in_channels=2, out_channels=2, img_shape=(8, 8)))
    b = SongUNet(
        dataclasses.replace(cfg, channels_last=True),
        in_channels=2,
        out_channels=2,
        img_shape=(8, 8),
    )
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 2, 8, 8)
    oa, ob = a(x, torch.ones(2)), b(x, torch.ones(2))
    torch.testing.assert_close(oa, ob, atol=1e-5, rtol=0)
    oa.square().sum().backward()
    ob.square().sum().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-4, rtol=1e-3, msg=name)


def test_regression_unet_ignores_noise_and_prepends_zero_latents():
    net = _randomize(
        SongUNet(
            dataclasses.replace(TINY, embedding_type="zero"),
            in_channels=5,
            out_channels=2,
            img_shape=(8, 8),
        )
    ).eval()
    reg = RegressionUNet(net)
    cond = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = net(torch.cat([torch.zeros(2, 2, 8, 8), cond], dim=1), torch.full((2,), 7.0))
        torch.testing.assert_close(reg(cond), expected)


def test_probability_channels_are_softmaxed_in_eval():
    cfg = dataclasses.replace(TINY, lead_time_channels=2, lead_time_steps=3, prob_channels=(1, 2))
    net = _randomize(SongUNet(cfg, in_channels=2, out_channels=3, img_shape=(8, 8))).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 2, 8, 8), torch.ones(2), lead_time=torch.tensor([0, 2]))
    torch.testing.assert_close(out[:, 1:].sum(dim=1), torch.ones(2, 8, 8))
    with pytest.raises(ValueError, match="lead_time"):
        net(torch.randn(1, 2, 8, 8), torch.ones(1))


def test_training_backward_reaches_every_parameter():
    net = SongUNet(
        dataclasses.replace(TINY, gridtype="learnable"),
        in_channels=2,
        out_channels=2,
        img_shape=(8, 8),
    )
    _randomize(net)
    net(torch.randn(2, 2, 8, 8), torch.rand(2)).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_torch_compiled_network_trains_with_dropout():
    # network.compile=true: dynamo must not trace the eager CPU dropout mask (it failed to
    # compile: "cannot determine truth value of Relational"); ~50 s of inductor codegen
    cfg = dataclasses.replace(TINY, dropout=0.2, attn_resolutions=(), model_channels=8)
    net = SongUNet(cfg, in_channels=3, out_channels=2, img_shape=(16, 16)).train()
    loss = torch.compile(net)(torch.randn(2, 3, 16, 16), torch.ones(2)).square().mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in net.parameters())


# -- config -------------------------------------------------------------------------------
def test_presets_match_the_reference_corrdiff_networks():
    mini, normal = NetworkConfig.preset("mini"), NetworkConfig.preset("normal")
    assert (mini.model_channels, mini.channel_mult, mini.attn_resolutions) == (
        64,
        (1, 2, 2),
        (16,),
    )
    assert (normal.model_channels, normal.channel_mult, normal.attn_resolutions) == (
        128,
        (1, 2, 2, 2, 2),
        (28,),
    )
    assert NetworkConfig.preset("mini", dropout=0.0).dropout == 0.0
    with pytest.raises(ConfigError, match="unknown network preset 'huge'"):
        NetworkConfig.preset("huge")


def test_network_config_rejects_bad_grid_channels_naming_the_field():
    with pytest.raises(ConfigError, match="N_grid_channels"):
        from_dict(NetworkConfig, {"gridtype": "sinusoidal", "N_grid_channels": 6})
