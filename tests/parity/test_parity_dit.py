"""DiT forward parity with PhysicsNeMo 2.2.2: same weights -> same outputs (fp32, atol 1e-5).

PhysicsNeMo's ``DiT`` gets random O(1) weights (its fresh modulation and output layers are
zero, which would make any comparison pass); they are mapped into ours by
:func:`~corrdiff_xr.model.dit_import.map_physicsnemo_dit_state_dict`, the mapping a ``.mdlus``
import uses, and both run the same images and noise labels.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from physicsnemo_ref import physicsnemo, randomize_, requires_physicsnemo

from corrdiff_xr.config import NetworkConfig
from corrdiff_xr.model.dit_import import (
    DiTImportError,
    dit_config_from_physicsnemo,
    map_physicsnemo_dit_state_dict,
    physicsnemo_dit_kwargs,
)
from corrdiff_xr.nn import DiT, RegressionUNet
from corrdiff_xr.nn.dit import dit_options, neighborhood_attention

pytestmark = requires_physicsnemo

ATOL = 1e-5
IN, OUT = 5, 2  # 2 latent + 3 condition channels, as CorrDiff's residual net sees them

CONFIGS = {
    "square_patches_learnable_positions": (
        {"patch_size": 4, "hidden_size": 32, "depth": 2, "num_heads": 4},
        (16, 16),
    ),
    "rectangular_patches_rms_qk_norm": (
        {
            "patch_size": [2, 4],
            "hidden_size": 32,
            "depth": 2,
            "num_heads": 2,
            "mlp_ratio": 2.0,
            "qk_norm": "rmsnorm",
        },
        (16, 24),
    ),
    "layernorm_qk_norm_no_positions": (
        {
            "patch_size": 4,
            "hidden_size": 32,
            "depth": 1,
            "num_heads": 4,
            "qk_norm": "layernorm",
            "pos_embed": "none",
        },
        (16, 16),
    ),
}


def _pair(options, shape, *, seed=1):
    """PhysicsNeMo's DiT with random weights and ours with those weights mapped across."""
    from physicsnemo.models.dit import DiT as ReferenceDiT

    cfg = NetworkConfig(arch="dit", options=options, dropout=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ReferenceDiT(
            **physicsnemo_dit_kwargs(cfg, in_channels=IN, out_channels=OUT, img_shape=shape)
        )
    randomize_(ref, seed=seed)
    ours = DiT(cfg, in_channels=IN, out_channels=OUT, img_shape=shape)
    ours.load_state_dict(map_physicsnemo_dit_state_dict(ref.state_dict()), strict=True)
    return ref.eval(), ours.eval()


def _inputs(shape, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN, *shape, generator=g)
    # EDM noise labels c_noise = ln(sigma) / 4 for sigma 0.002 .. 800, and the regression's 0
    labels = torch.log(torch.tensor([0.002, 1.0, 800.0][:n])) / 4
    return x, labels


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_dit_forward_equals_physicsnemo(name):
    options, shape = CONFIGS[name]
    ref, ours = _pair(options, shape)
    x, labels = _inputs(shape)
    with torch.no_grad():
        want = ref(x, labels)
        got = ours(x, labels)
        zero_want = ref(x, torch.zeros(3))
        zero_got = RegressionUNet(ours).net(x, torch.zeros(1))  # a (1,) label broadcasts
    assert want.shape == (3, OUT, *shape)
    assert want.abs().mean() > 0.1  # O(1) outputs: the comparison can fail
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(zero_got, zero_want, atol=ATOL, rtol=0)
    assert (want[0] - want[2]).abs().max() > 1e-2  # the noise label reaches the output


def test_concatenated_condition_matches_physicsnemos_concat_wrapper():
    """CorrDiff hands the DiT [latent, condition] along channels, as ``ConcatConditionWrapper``
    does in front of PhysicsNeMo's DiT; the vector ``condition`` input stays unused."""
    from physicsnemo.diffusion.utils.model_wrappers import ConcatConditionWrapper

    options, shape = CONFIGS["square_patches_learnable_positions"]
    ref, ours = _pair(options, shape, seed=4)
    x, labels = _inputs(shape)
    latent, condition = x[:, :OUT], x[:, OUT:]
    with torch.no_grad():
        want = ConcatConditionWrapper(ref)(latent, labels, condition=condition)
        got = ours(torch.cat([latent, condition], dim=1), labels)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


NEIGHBORHOOD = (
    {"patch_size": 2, "hidden_size": 32, "depth": 2, "num_heads": 4, "attention": "neighborhood"},
    (12, 16),  # a 6x8 token grid in 3x3 windows (attn_kernel's default)
)


ROUND_TRIP = {
    **CONFIGS,
    "neighborhood": NEIGHBORHOOD,
    "neighborhood_rope": ({**NEIGHBORHOOD[0], "pos_embed": "rope"}, NEIGHBORHOOD[1]),
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
def test_physicsnemo_arguments_map_to_the_same_config(name):
    options, shape = ROUND_TRIP[name]
    cfg = NetworkConfig(arch="dit", options=options, dropout=0.0)
    kwargs = physicsnemo_dit_kwargs(cfg, in_channels=IN, out_channels=OUT, img_shape=shape)
    back, sizes = dit_config_from_physicsnemo(kwargs)
    assert sizes == {"in_channels": IN, "out_channels": OUT, "img_shape": shape}
    assert dit_options(back) == dit_options(cfg)
    ours = DiT(cfg, in_channels=IN, out_channels=OUT, img_shape=shape)
    again = DiT(back, **sizes)
    assert {k: v.shape for k, v in again.state_dict().items()} == {
        k: v.shape for k, v in ours.state_dict().items()
    }


def test_weights_and_arguments_outside_the_supported_layout_are_refused():
    assert physicsnemo() is not None
    ref, _ = _pair(*CONFIGS["square_patches_learnable_positions"])
    sd = {f"model.{k}": v for k, v in ref.state_dict().items()}
    sd["model.blocks.0.attention.mask_token"] = torch.zeros(1, 1, 32)
    with pytest.raises(DiTImportError, match=r"'model.blocks.0.attention.mask_token' is not part"):
        map_physicsnemo_dit_state_dict(sd, prefix="model.")
    del sd["model.blocks.0.attention.mask_token"]
    mapped = map_physicsnemo_dit_state_dict(sd, prefix="model.", target_prefix="residual.net.")
    assert "residual.net.blocks.1.fc2.weight" in mapped and len(mapped) == len(sd) - 1  # freqs
    base = {"input_size": [16, 16], "in_channels": 3}
    with pytest.raises(DiTImportError, match=r"attention_backend='transformer_engine' is not"):
        dit_config_from_physicsnemo({**base, "attention_backend": "transformer_engine"})
    rope = {**base, "attention_backend": "natten2d_rope", "attn_kwargs": {"rope_theta": 500.0}}
    with pytest.raises(DiTImportError, match=r"attn_kwargs \['rope_theta'\] are not supported"):
        dit_config_from_physicsnemo(rope)
    natten = {**base, "attention_backend": "natten2d", "attn_kwargs": {"qk_norm": True}}
    with pytest.raises(DiTImportError, match=r"attn_kwargs \['qk_norm'\] are not supported"):
        dit_config_from_physicsnemo(natten)
    with pytest.raises(DiTImportError, match=r"condition_dim=4 is not supported"):
        dit_config_from_physicsnemo({**base, "condition_dim": 4})


def brute_force_na2d(q, k, v, kernel_size):
    """NATTEN's 2-D neighbourhood attention (dilation 1, not causal), one query at a time:
    query (i, j) sees the ``kernel_size``-square of keys centred on it, shifted inside the grid.
    Layout (N, h, w, heads, head_dim), as ``natten.functional.na2d``."""
    n, h, w, heads, d = q.shape
    out = torch.empty_like(q)
    for i in range(h):
        r = min(max(i - kernel_size // 2, 0), h - kernel_size)
        for j in range(w):
            c = min(max(j - kernel_size // 2, 0), w - kernel_size)
            keys = k[:, r : r + kernel_size, c : c + kernel_size].reshape(n, -1, heads, d)
            vals = v[:, r : r + kernel_size, c : c + kernel_size].reshape(n, -1, heads, d)
            weights = (torch.einsum("nhd,nkhd->nhk", q[:, i, j], keys) / d**0.5).softmax(-1)
            out[:, i, j] = torch.einsum("nhk,nkhd->nhd", weights, vals)
    return out


@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_plain_neighborhood_attention_equals_natten_semantics(kernel):
    g = torch.Generator().manual_seed(kernel)
    h, w, heads, d = 6, 7, 2, 8
    q, k, v = (torch.randn(2, h, w, heads, d, generator=g) for _ in range(3))
    want = brute_force_na2d(q, k, v, kernel)
    flat = [t.reshape(2, h * w, heads, d).transpose(1, 2) for t in (q, k, v)]
    got = neighborhood_attention(*flat, (h, w), kernel).transpose(1, 2).reshape(q.shape)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("pos_embed", ["learnable", "rope"])
def test_neighborhood_dit_equals_physicsnemos_natten2d(monkeypatch, pos_embed):
    """NATTEN is not installed here, so the reference's ``na2d`` call runs the brute-force
    definition above; what this checks is PhysicsNeMo's natten2d (and natten2d_rope: rotary
    tables, rotation) weight layout, reshapes and everything around the kernel, against ours."""
    import physicsnemo.nn.module.dit_layers as layers

    monkeypatch.setattr(layers, "_na2d_func", brute_force_na2d)
    options, shape = NEIGHBORHOOD
    ref, ours = _pair({**options, "pos_embed": pos_embed}, shape, seed=7)
    assert (ours.pos_embed is None) == (pos_embed == "rope")
    x, labels = _inputs(NEIGHBORHOOD[1])
    with torch.no_grad():
        want = ref(x, labels)
        got = ours(x, labels)
    assert want.abs().mean() > 0.1
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
