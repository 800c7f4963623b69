"""PhysicsNeMo DiT ``.mdlus`` files (``DiT``, ``ConcatConditionWrapper(DiT)``,
``EDMPreconditioner(ConcatConditionWrapper(DiT))``, written by PhysicsNeMo 2.2.2's own
``Module.save`` with random weights) import into a CorrDiff whose networks give PhysicsNeMo's
numbers (fp32, atol 1e-5), and everything outside those layouts is refused in one line."""

from __future__ import annotations

import pytest
import torch
from package_fixtures_dit import (
    CONV_DETOKENIZER,
    edit_args,
    reference_dit,
    small_dit_kwargs,
    write_dit_mdlus,
)
from physicsnemo_ref import physicsnemo, requires_physicsnemo

from corrdiff_xr.config import EDMConfig, NetworkConfig, SamplerConfig
from corrdiff_xr.model.mdlus import MdlusError, import_mdlus
from corrdiff_xr.model.mdlus_dit import import_dit_mdlus
from corrdiff_xr.nn import DiT

pytestmark = requires_physicsnemo

ATOL = 1e-5
SHAPE = (16, 24)  # a 4 x 6 token grid
IN, OUT = 3, 2  # condition channels, output channels


def _inputs(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, OUT, *SHAPE, generator=g), torch.randn(n, IN, *SHAPE, generator=g)


@pytest.mark.parametrize("layout", ["DiT", "ConcatConditionWrapper"])
def test_a_dit_mean_network_imports_as_the_regression(tmp_path, layout):
    kwargs = small_dit_kwargs(IN, OUT, SHAPE, block_kwargs={"qk_norm_type": "RMSNorm"})
    ref = write_dit_mdlus(tmp_path / "mean.mdlus", kwargs, layout=layout, seed=1)
    model = import_mdlus(tmp_path / "mean.mdlus")
    _, condition = _inputs()
    with torch.no_grad():
        want = ref(condition, torch.zeros(3))  # the mean sees the condition alone, t = 0
        got = model.regression(condition)
    assert want.abs().mean() > 0.1  # O(1) outputs: the comparison can fail
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert model.residual is None and model.regression.net.in_channels == OUT + IN


def test_an_edm_preconditioned_dit_imports_as_a_direct_diffusion(tmp_path):
    kwargs = small_dit_kwargs(OUT + IN, OUT, SHAPE)
    ref = write_dit_mdlus(tmp_path / "d.mdlus", kwargs, layout="EDMPreconditioner", sigma_data=0.7)
    model = import_mdlus(None, tmp_path / "d.mdlus")
    assert model.edm_config.objective == "direct" and model.edm_config.sigma_data == 0.7
    x, condition = _inputs()
    sigma = torch.tensor([0.01, 1.0, 80.0])
    with torch.no_grad():
        want = ref(x, sigma, condition=condition)
        got = model.residual(x, sigma, condition=condition)
    assert (want - x).abs().mean() > 0.1
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    gen = [torch.Generator().manual_seed(0)]
    sample = model.sample(condition[:1], generators=gen, sampler=SamplerConfig(num_steps=2))
    assert sample.shape == (1, OUT, *SHAPE) and torch.isfinite(sample).all()


def test_a_dit_mean_and_a_residual_diffusion_on_it_import_together(tmp_path):
    write_dit_mdlus(tmp_path / "m.mdlus", small_dit_kwargs(IN, OUT, SHAPE), seed=2)
    ref = write_dit_mdlus(
        tmp_path / "d.mdlus",
        small_dit_kwargs(OUT + OUT + IN, OUT, SHAPE),  # latent | regression mean | inputs
        layout="EDMPreconditioner",
        seed=3,
    )
    model = import_dit_mdlus(tmp_path / "m.mdlus", tmp_path / "d.mdlus")
    assert model.edm_config.objective == "residual" and model.edm_config.hr_mean_conditioning
    x, condition = _inputs()
    cond = torch.cat([x.flip(0), condition], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(
            model.residual(x, torch.ones(3), condition=cond),
            ref(x, torch.ones(3), condition=cond),
            atol=ATOL,
            rtol=0,
        )


def test_a_vector_condition_gives_physicsnemos_numbers():
    """``condition_dim`` (e.g. sin/cos of the day of year): its embedding adds to the noise
    label's, in the bare DiT and behind ``ConcatConditionWrapper``'s ``cond_vec``."""
    from tensordict import TensorDict

    from corrdiff_xr.model.dit_import import dit_config_from_physicsnemo

    kwargs = small_dit_kwargs(OUT + IN, OUT, SHAPE, condition_dim=4)
    ref = reference_dit(kwargs, layout="ConcatConditionWrapper", seed=5)
    cfg, sizes = dit_config_from_physicsnemo(kwargs)
    ours = DiT(cfg, **sizes).eval()
    from corrdiff_xr.model.dit_import import map_physicsnemo_dit_state_dict

    ours.load_state_dict(map_physicsnemo_dit_state_dict(ref.state_dict(), prefix="model."))
    x, condition = _inputs()
    vec = torch.randn(3, 4, generator=torch.Generator().manual_seed(9))
    labels = torch.tensor([0.0, 100.0, 999.0])
    td = TensorDict({"cond_concat": condition, "cond_vec": vec}, batch_size=[3])
    with torch.no_grad():
        want = ref(x, labels, condition=td)
        got = ours(torch.cat([x, condition], 1), labels, condition=vec)
        without = ours(torch.cat([x, condition], 1), labels)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert (got - without).abs().max() > 1e-2  # the vector reaches the output


def _one_line(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg


def test_unknown_classes_and_arguments_are_refused_naming_file_and_key(tmp_path):
    assert physicsnemo() is not None
    path = tmp_path / "d.mdlus"
    write_dit_mdlus(path, small_dit_kwargs(OUT + IN, OUT, SHAPE), layout="EDMPreconditioner")
    nested = "__physicsnemo.Module__.model.model"
    cases = {
        "inner_class": (lambda a: a[nested].update(__name__="SongUNet"), ["SongUNet", nested]),
        "dit_argument": (lambda a: a[nested]["__args__"].update(foo=1), ["['foo']", nested]),
        "attention": (
            lambda a: a[nested]["__args__"].update(attention_backend="transformer_engine"),
            ["attention_backend='transformer_engine'"],
        ),
        "wrapper_argument": (lambda a: a["__args__"].update(extra=2), ["['extra']", "args.json"]),
        "per_channel_sigma": (
            lambda a: a["__args__"].update(sigma_data=[0.5, 0.5]),
            ["per-channel sigma_data"],
        ),
        "dangling_model": (lambda a: a.pop(nested), ["'model'", "names no nested module"]),
        "outer_class": (lambda a: a.update(__name__="VPPreconditioner"), ["VPPreconditioner"]),
    }
    for name, (change, needles) in cases.items():
        bad = tmp_path / f"{name}.mdlus"
        bad.write_bytes(path.read_bytes())
        edit_args(bad, change)
        with pytest.raises(MdlusError) as excinfo:
            import_dit_mdlus(None, bad)
        _one_line(excinfo, str(bad), *needles)
    import_dit_mdlus(None, path)  # the unedited file imports


def test_weights_outside_the_layout_and_misuse_are_refused(tmp_path):
    from corrdiff_xr.model.mdlus import read_mdlus

    path = tmp_path / "d.mdlus"
    write_dit_mdlus(path, small_dit_kwargs(OUT + IN, OUT, SHAPE), layout="EDMPreconditioner")
    ck = read_mdlus(path)
    stray = dict(ck.state_dict, **{"model.model.blocks.0.attention.mask_token": torch.zeros(3)})
    with pytest.raises(MdlusError) as excinfo:
        import_dit_mdlus(None, type(ck)(**{**vars(ck), "state_dict": stray}))
    _one_line(excinfo, str(path), "'model.model.blocks.0.attention.mask_token'")
    with pytest.raises(MdlusError) as excinfo:
        import_dit_mdlus(path)  # an EDM denoiser is no mean network
    _one_line(excinfo, "not a regression network")
    bare = tmp_path / "bare.mdlus"
    write_dit_mdlus(bare, small_dit_kwargs(OUT + IN, OUT, SHAPE))
    with pytest.raises(MdlusError) as excinfo:
        import_dit_mdlus(None, bare)  # no preconditioner and no flow: no way to sample it
    _one_line(excinfo, "give edm")
    model = import_dit_mdlus(None, bare, edm=EDMConfig(objective="direct", flow="x"))
    assert model.edm_config.flow == "x"


def test_the_imported_config_round_trips_through_our_checkpoint(tmp_path):
    path = tmp_path / "m.mdlus"
    write_dit_mdlus(path, small_dit_kwargs(IN, OUT, SHAPE, condition_dim=2))
    model = import_mdlus(path)
    cfg = model.regression_config
    assert isinstance(cfg, NetworkConfig) and cfg.arch == "dit"
    assert cfg.options["condition_dim"] == 2 and cfg.options["patch_size"] == [4, 4]


def _na2d(q, k, v, kernel_size):
    """Our plain neighbourhood attention in ``natten.functional.na2d``'s layout
    (N, h, w, heads, d)."""
    from corrdiff_xr.nn.dit import neighborhood_attention

    n, h, w, heads, d = q.shape
    flat = [t.reshape(n, h * w, heads, d).transpose(1, 2) for t in (q, k, v)]
    out = neighborhood_attention(*flat, (h, w), kernel_size)
    return out.transpose(1, 2).reshape(q.shape)


def test_a_natten_rope_dit_imports_with_the_same_numbers(tmp_path, monkeypatch):
    """The published DiTs use ``natten2d_rope``. NATTEN is not installed, so the reference's
    ``na2d`` kernel is replaced by our plain neighbourhood attention (shown equal to NATTEN's
    definition, brute force, in tests/parity/test_parity_dit.py); what this checks is the
    file's arguments, the weights' layout and the rotary tables through the importer."""
    import physicsnemo.nn.module.dit_layers as layers

    monkeypatch.setattr(layers, "_na2d_func", _na2d)
    kwargs = small_dit_kwargs(
        OUT + IN, OUT, (24, 32), patch_size=2, attention_backend="natten2d_rope",
        attn_kwargs={"attn_kernel": 5},
    )  # fmt: skip
    ref = write_dit_mdlus(tmp_path / "d.mdlus", kwargs, layout="EDMPreconditioner", seed=6)
    model = import_mdlus(None, tmp_path / "d.mdlus")
    options = model.residual_config.options
    assert (options["attention"], options["pos_embed"], options["attn_kernel"]) == (
        "neighborhood",
        "rope",
        5,
    )
    g = torch.Generator().manual_seed(3)
    x, condition = torch.randn(2, OUT, 24, 32, generator=g), torch.randn(2, IN, 24, 32, generator=g)
    with torch.no_grad():
        want = ref(x, torch.tensor([0.5, 20.0]), condition=condition)
        got = model.residual(x, torch.tensor([0.5, 20.0]), condition=condition)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_a_conv_head_dit_mean_imports_with_physicsnemos_numbers(tmp_path):
    """CorrDiff COSMO-ERA5's mean network: ``detokenizer="proj_reshape_2d_conv"``, its conv
    head's random weights under ``detokenizer.conv_head``, the projection under
    ``detokenizer.proj``; a bad head argument in the file is refused naming it."""
    kwargs = small_dit_kwargs(IN, OUT, SHAPE, **CONV_DETOKENIZER)
    ref = write_dit_mdlus(tmp_path / "mean.mdlus", kwargs, seed=8)
    assert any(k.startswith("detokenizer.conv_head.2.") for k in ref.state_dict())
    model = import_mdlus(tmp_path / "mean.mdlus")
    options = model.regression_config.options
    assert (options["conv_head_layers"], options["conv_head_hidden"]) == (2, 8)
    _, condition = _inputs()
    with torch.no_grad():
        want = ref(condition, torch.zeros(3))
        got = model.regression(condition)
        ref.detokenizer.conv_head[-1].weight.zero_()
        plain = ref(condition, torch.zeros(3))
    assert (want - plain).abs().mean() > 1e-3  # the head's share is in the comparison
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    bad = tmp_path / "bad.mdlus"
    bad.write_bytes((tmp_path / "mean.mdlus").read_bytes())
    edit_args(bad, lambda a: a["__args__"]["detokenizer_kwargs"].update(conv_kernel=4))
    with pytest.raises(MdlusError) as excinfo:
        import_mdlus(bad)
    _one_line(excinfo, str(bad), "conv_head_kernel=4 must be odd")


def test_a_natten_rope_dit_with_qk_norm_another_base_and_a_conv_head_imports(tmp_path, monkeypatch):
    """Every variant the published DiTs may use at once, in an EDM diffusion file."""
    import physicsnemo.nn.module.dit_layers as layers

    monkeypatch.setattr(layers, "_na2d_func", _na2d)
    kwargs = small_dit_kwargs(
        OUT + IN, OUT, (24, 32), patch_size=2, attention_backend="natten2d_rope",
        attn_kwargs={"attn_kernel": 5, "qk_norm": True, "rope_theta": 200.0},
        **CONV_DETOKENIZER,
    )  # fmt: skip
    ref = write_dit_mdlus(tmp_path / "d.mdlus", kwargs, layout="EDMPreconditioner", seed=10)
    model = import_mdlus(None, tmp_path / "d.mdlus")
    options = model.residual_config.options
    assert (options["qk_norm"], options["rope_theta"], options["conv_head_layers"]) == (
        "layernorm_no_affine",
        200.0,
        2,
    )
    g = torch.Generator().manual_seed(4)
    x, condition = torch.randn(2, OUT, 24, 32, generator=g), torch.randn(2, IN, 24, 32, generator=g)
    with torch.no_grad():
        want = ref(x, torch.tensor([0.5, 20.0]), condition=condition)
        got = model.residual(x, torch.tensor([0.5, 20.0]), condition=condition)
    assert (want - x).abs().mean() > 0.1
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_the_import_adapting_options_are_checked_and_have_no_physicsnemo_argument():
    from corrdiff_xr.config import ConfigError
    from corrdiff_xr.model.dit_import import DiTImportError, physicsnemo_dit_kwargs
    from corrdiff_xr.nn.dit_options import dit_check_config

    base = {"patch_size": 4, "hidden_size": 32, "depth": 1, "num_heads": 4}
    for bad, needle in (
        ({"vector_from_inputs": True}, "needs options.condition_dim > 0"),
        ({"vector_from_inputs": 1, "condition_dim": 2}, "vector_from_inputs must be true"),
        ({"flow_time_scale": -1.0}, "flow_time_scale=-1.0 must be a number in"),
    ):
        with pytest.raises(ConfigError, match=needle):
            dit_check_config(NetworkConfig(arch="dit", options={**base, **bad}), "n", ConfigError)
    cfg = NetworkConfig(arch="dit", options={**base, "flow_time_scale": 999.0})
    with pytest.raises(DiTImportError, match="no such argument"):
        physicsnemo_dit_kwargs(cfg, in_channels=3, out_channels=2, img_shape=(16, 16))
    net = DiT(NetworkConfig(arch="dit", options={**base, "condition_dim": 2,
              "vector_from_inputs": True}), in_channels=5, out_channels=2, img_shape=(16, 16))  # fmt: skip
    assert net.patch_embed.in_channels == 3  # the two vector channels are not pixels
