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
    # CorrDiff COSMO-ERA5's mean: proj_reshape_2d_conv, a residual conv head on the image
    "conv_head_detokenizer": (
        {
            "patch_size": 4,
            "hidden_size": 32,
            "depth": 1,
            "num_heads": 4,
            "conv_head_layers": 3,
            "conv_head_hidden": 8,
            "conv_head_kernel": 5,
        },
        (16, 24),
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


def test_the_conv_head_with_physicsnemos_defaults_moves_the_output_as_physicsnemos():
    """``conv_layers`` etc. left out: PhysicsNeMo's defaults (2 layers, 64 maps, 3 x 3). With
    random weights the head moves the output and ours moves it the same way; with its last
    layer zero (as both initialise it) the DiT gives the plain detokenizer's output."""
    options = {"patch_size": 4, "hidden_size": 32, "depth": 2, "num_heads": 4}
    kwargs = physicsnemo_dit_kwargs(
        NetworkConfig(arch="dit", options=options, dropout=0.0),
        in_channels=IN, out_channels=OUT, img_shape=(16, 16),
    )  # fmt: skip
    cfg, _ = dit_config_from_physicsnemo({**kwargs, "detokenizer": "proj_reshape_2d_conv"})
    ref, ours = _pair(cfg.options, (16, 16), seed=2)
    assert ours.conv_head[0].out_channels == 64 and ours.conv_head[0].kernel_size == (3, 3)
    assert len(ours.conv_head) == 3  # conv, GELU, conv
    x, labels = _inputs((16, 16))
    with torch.no_grad():
        want, got = ref(x, labels), ours(x, labels)
        ours.conv_head[-1].weight.zero_()
        ours.conv_head[-1].bias.zero_()
        plain = ours(x, labels)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert (got - plain).abs().mean() > 1e-3  # the head's share is in the comparison
    fresh = DiT(cfg, in_channels=IN, out_channels=OUT, img_shape=(16, 16))
    assert not fresh.conv_head[-1].weight.any() and fresh.conv_head[0].weight.any()


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


#: the published COSMO DiT's kind: natten2d_rope, QK-norm, another rotary base, the conv head
NEIGHBORHOOD_VARIANTS = {
    "plain": {},
    "rope": {"pos_embed": "rope"},
    "rope_theta_qk_norm": {
        "pos_embed": "rope",
        "rope_theta": 100.0,
        "qk_norm": "layernorm_no_affine",
    },
    "qk_norm_conv_head": {
        "qk_norm": "layernorm_no_affine",
        "conv_head_layers": 1,
        "conv_head_kernel": 3,
    },
}

ROUND_TRIP = {
    **CONFIGS,
    **{f"neighborhood_{k}": ({**NEIGHBORHOOD[0], **v}, NEIGHBORHOOD[1])
       for k, v in NEIGHBORHOOD_VARIANTS.items()},
}  # fmt: skip


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
    natten = {**base, "attention_backend": "natten2d", "attn_kwargs": {"rope_theta": 500.0}}
    with pytest.raises(DiTImportError, match=r"attn_kwargs \['rope_theta'\] are not supported"):
        dit_config_from_physicsnemo(natten)  # PhysicsNeMo's natten2d takes no rotary base
    natten["attn_kwargs"] = {"qk_norm": "yes"}
    with pytest.raises(DiTImportError, match=r"qk_norm='yes' must be true or false"):
        dit_config_from_physicsnemo(natten)
    conv = {**base, "detokenizer": "proj_reshape_2d_conv"}
    for kwargs, needle in (
        ({"conv_stride": 2}, r"detokenizer_kwargs \['conv_stride'\] are not supported"),
        ({"conv_layers": 0}, r"conv_layers=0 must be >= 1"),
    ):
        with pytest.raises(DiTImportError, match=needle):
            dit_config_from_physicsnemo({**conv, "detokenizer_kwargs": kwargs})
    with pytest.raises(DiTImportError, match=r"detokenizer='hpx_patch_detokenizer' is not"):
        dit_config_from_physicsnemo({**base, "detokenizer": "hpx_patch_detokenizer"})
    with pytest.raises(DiTImportError, match=r"conditioning_embedder='edm' is not supported"):
        dit_config_from_physicsnemo({**base, "conditioning_embedder": "edm"})


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


@pytest.mark.parametrize("variant", sorted(NEIGHBORHOOD_VARIANTS))
def test_neighborhood_dit_equals_physicsnemos_natten2d(monkeypatch, variant):
    """NATTEN is not installed here, so the reference's ``na2d`` call runs the brute-force
    definition above; what this checks is PhysicsNeMo's natten2d (and natten2d_rope: rotary
    tables of base ``rope_theta``, rotation; ``qk_norm``; the conv head) weight layout,
    reshapes and everything around the kernel, against ours."""
    import physicsnemo.nn.module.dit_layers as layers

    monkeypatch.setattr(layers, "_na2d_func", brute_force_na2d)
    options, shape = NEIGHBORHOOD
    options = {**options, **NEIGHBORHOOD_VARIANTS[variant]}
    ref, ours = _pair(options, shape, seed=7)
    assert (ours.pos_embed is None) == (options.get("pos_embed") == "rope")
    qk_norm = options.get("qk_norm") == "layernorm_no_affine"
    assert isinstance(ref.blocks[0].attention.q_norm, torch.nn.LayerNorm) == qk_norm
    x, labels = _inputs(NEIGHBORHOOD[1])
    with torch.no_grad():
        want = ref(x, labels)
        got = ours(x, labels)
        ours.rope_theta = None if ours.rope_theta is None else 10000.0 + 1.0
        other_theta = ours(x, labels)
    assert want.abs().mean() > 0.1
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    if "rope_theta" in options:  # the base reaches the output
        assert ref.rope.theta == options["rope_theta"]
        assert (other_theta - got).abs().max() > 1e-3


def test_the_variant_options_left_out_change_no_config_and_bad_ones_are_refused():
    """Configs and imported headers without the variants keep exactly their old options (so
    checkpoint identities stay), and each bad value is refused in one line naming it."""
    from corrdiff_xr.config import ConfigError
    from corrdiff_xr.nn.dit_options import dit_check_config

    options, shape = NEIGHBORHOOD
    cfg = NetworkConfig(arch="dit", options={**options, "pos_embed": "rope"}, dropout=0.0)
    kwargs = physicsnemo_dit_kwargs(cfg, in_channels=IN, out_channels=OUT, img_shape=shape)
    assert "detokenizer" not in kwargs and kwargs["attn_kwargs"] == {"attn_kernel": 3}
    back, _ = dit_config_from_physicsnemo({**kwargs, "attn_kwargs": {"rope_theta": 10000.0}})
    assert not {"rope_theta", "conv_head_layers", "conv_head_hidden"} & set(back.options)
    assert back.options["qk_norm"] == "none"
    # natten2d's QK-norm may also come through block_kwargs (PhysicsNeMo forwards both)
    from physicsnemo.models.dit import DiT as ReferenceDiT

    flagged = {**kwargs, "block_kwargs": {"qk_norm": True}}
    norm = ReferenceDiT(**flagged).blocks[0].attention.q_norm
    assert (norm.elementwise_affine, norm.eps) == (False, 1e-6)
    assert dit_config_from_physicsnemo(flagged)[0].options["qk_norm"] == "layernorm_no_affine"
    base = {"patch_size": 4, "hidden_size": 32, "depth": 1, "num_heads": 4}
    for bad, needle in (
        ({"conv_head_layers": 1, "conv_head_kernel": 4}, "conv_head_kernel=4 must be odd"),
        ({"conv_head_layers": 9}, "conv_head_layers=9 must be an integer in [0, 8]"),
        ({"rope_theta": 100.0}, "rope_theta=100.0 needs options.pos_embed: rope"),
        ({"qk_norm": "layernorm_plain"}, "qk_norm='layernorm_plain' must be one of"),
    ):
        with pytest.raises(ConfigError) as excinfo:
            dit_check_config(NetworkConfig(arch="dit", options={**base, **bad}), "n", ConfigError)
        assert needle in str(excinfo.value) and "\n" not in str(excinfo.value)
    timm = NetworkConfig(arch="dit", options={**base, "qk_norm": "layernorm_no_affine"})
    with pytest.raises(DiTImportError, match="natten2d QK-norm"):
        physicsnemo_dit_kwargs(timm, in_channels=IN, out_channels=OUT, img_shape=(16, 16))
    natten = NetworkConfig(arch="dit", options={**options, "qk_norm": "rmsnorm"})
    with pytest.raises(DiTImportError, match="natten2d attention has no qk_norm 'rmsnorm'"):
        physicsnemo_dit_kwargs(natten, in_channels=IN, out_channels=OUT, img_shape=shape)
