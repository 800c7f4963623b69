"""Importing PhysicsNeMo .mdlus checkpoints: safe reading, class/argument mapping, errors."""

from __future__ import annotations

import dataclasses
import io
import json
import pathlib
import pickle
import tarfile
import zipfile

import pytest
import torch
from physicsnemo_ref import (
    randomize_,
    reference_regression,
    reference_residual,
    requires_physicsnemo,
)

from corrdiff_xr.config import EDMConfig
from corrdiff_xr.model import CheckpointError, import_mdlus
from corrdiff_xr.model.mdlus import MdlusError, read_mdlus
from corrdiff_xr.testing import TINY_NETWORK as TINY

REG = dataclasses.replace(TINY, embedding_type="zero")
SHAPE = (16, 24)


def _write_mdlus(
    path: pathlib.Path, name: str, args: dict, model_pt: bytes, *, fmt: str = "zip"
) -> pathlib.Path:
    files = {
        "args.json": json.dumps({"__name__": name, "__module__": "x", "__args__": args}).encode(),
        "metadata.json": b'{"mdlus_file_version": "0.1.0"}',
        "model.pt": model_pt,
    }
    if fmt == "zip":
        with zipfile.ZipFile(path, "w") as z:
            for k, v in files.items():
                z.writestr(k, v)
    else:
        with tarfile.open(path, "w") as tar:
            for k, v in files.items():
                info = tarfile.TarInfo(k)
                info.size = len(v)
                tar.addfile(info, io.BytesIO(v))
    return path


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class _Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


# -- safety and errors (no reference needed) -----------------------------------------------
def test_a_pickle_payload_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = _torch_bytes({"model.enc.16x16_conv.weight": torch.zeros(1), "x": _Payload(marker)})
    path = _write_mdlus(tmp_path / "evil.mdlus", "UNet", {"img_resolution": 16}, evil)
    with pytest.raises(MdlusError, match="refused without running"):
        read_mdlus(path)
    with pytest.raises(MdlusError):
        import_mdlus(path)
    assert not marker.exists()


def test_a_plain_pickle_instead_of_a_torch_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = _write_mdlus(tmp_path / "evil.mdlus", "UNet", {}, pickle.dumps(_Payload(marker)))
    with pytest.raises(MdlusError):
        read_mdlus(path)
    assert not marker.exists()


def test_unknown_classes_are_named_in_the_error(tmp_path):
    path = _write_mdlus(
        tmp_path / "f.mdlus",
        "FNO",
        {"in_channels": 3},
        _torch_bytes({"w": torch.zeros(1)}),
    )
    with pytest.raises(MdlusError, match="'FNO' is not a supported regression network"):
        import_mdlus(path)
    with pytest.raises(MdlusError, match="'FNO' is not a supported residual denoiser"):
        import_mdlus(None, path, in_channels=3)


def test_unsupported_network_arguments_are_named(tmp_path):
    args = {
        "img_resolution": 16,
        "img_in_channels": 7,
        "img_out_channels": 2,
        "model_type": "SongUNetPosEmbd",
        "encoder_type": "residual",
    }
    path = _write_mdlus(tmp_path / "r.mdlus", "UNet", args, _torch_bytes({}))
    with pytest.raises(MdlusError, match="encoder_type='residual' is not supported"):
        import_mdlus(path)


def test_files_that_are_not_archives_are_rejected(tmp_path):
    (tmp_path / "x.mdlus").write_bytes(b"hello")
    with pytest.raises(MdlusError, match="neither a zip nor a tar"):
        read_mdlus(tmp_path / "x.mdlus")
    with pytest.raises(FileNotFoundError):
        read_mdlus(tmp_path / "absent.mdlus")


# -- real reference checkpoints ------------------------------------------------------------
def _ref_regression():
    return randomize_(
        reference_regression(REG, in_channels=3, out_channels=2, img_shape=SHAPE),
        seed=1,
    ).eval()


def _ref_residual(edm=None, cond=5):
    edm = edm or EDMConfig()
    return randomize_(
        reference_residual(TINY, edm, cond_channels=cond, out_channels=2, img_shape=SHAPE),
        seed=2,
    ).eval()


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, *SHAPE, generator=g), torch.randn(2, 2, *SHAPE, generator=g)


@requires_physicsnemo
@pytest.mark.parametrize("legacy_format", [False, True], ids=["zip", "tar"])
def test_regression_saved_by_the_reference_imports_with_identical_outputs(tmp_path, legacy_format):
    ref = _ref_regression()
    if legacy_format:  # the reference's own legacy writer misplaces the file; build the tar layout
        _write_mdlus(
            tmp_path / "reg.mdlus",
            "UNet",
            ref._args["__args__"],
            _torch_bytes(ref.state_dict()),
            fmt="tar",
        )
    else:
        ref.save(str(tmp_path / "reg.mdlus"))
    model = import_mdlus(tmp_path / "reg.mdlus")
    assert model.residual is None and (model.in_channels, model.out_channels) == (3, 2)
    x, y = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            model.predict_mean(x), ref(torch.zeros_like(y), x), atol=1e-5, rtol=0
        )


@requires_physicsnemo
def test_legacy_edmprecondsr_imports_with_condition_scaling_and_infers_hr_mean(
    tmp_path,
):
    ref = _ref_residual(EDMConfig(scale_condition=True))
    ref.save(str(tmp_path / "res.mdlus"))
    model = import_mdlus(None, tmp_path / "res.mdlus", in_channels=3)
    assert model.edm_config.scale_condition and model.edm_config.hr_mean_conditioning
    x, y = _inputs()
    cond = torch.cat([y, x], dim=1)
    s = torch.tensor([0.01, 5.0])
    with torch.no_grad():
        torch.testing.assert_close(
            model.residual(y, s, condition=cond), ref(y, cond, s), atol=1e-5, rtol=0
        )


@requires_physicsnemo
def test_old_checkpoints_with_block_level_attention_keys_import(tmp_path):
    ref = _ref_residual()
    sd = {}
    for k, v in ref.state_dict().items():  # the pre-2.0 names: blockN.norm2/qkv/proj
        sd[
            k.replace(".attn.norm.", ".norm2.")
            .replace(".attn.qkv.", ".qkv.")
            .replace(".attn.proj.", ".proj.")
        ] = v
    assert any(".norm2." in k for k in sd)
    path = _write_mdlus(
        tmp_path / "old.mdlus",
        "EDMPrecondSuperResolution",
        ref._args["__args__"],
        _torch_bytes(sd),
    )
    model = import_mdlus(None, path, hr_mean_conditioning=True)
    x, y = _inputs()
    cond = torch.cat([y, x], dim=1)
    s = torch.tensor([0.3, 3.0])
    with torch.no_grad():
        torch.testing.assert_close(
            model.residual(y, s, condition=cond), ref(y, cond, s), atol=1e-5, rtol=0
        )


@requires_physicsnemo
def test_stormcast_regression_gets_zero_weights_for_the_latent_channels(tmp_path):
    from physicsnemo.models.diffusion_unets import StormCastUNet

    ref = StormCastUNet(
        img_resolution=list(SHAPE),
        img_in_channels=3,
        img_out_channels=2,
        model_channels=TINY.model_channels,
        channel_mult=list(TINY.channel_mult),
        num_blocks=TINY.num_blocks,
        attn_resolutions=list(TINY.attn_resolutions),
        dropout=TINY.dropout,
    )
    randomize_(ref, seed=4).eval()
    ref.save(str(tmp_path / "sc.mdlus"))
    model = import_mdlus(tmp_path / "sc.mdlus")
    assert model.regression_config.gridtype == "none"
    x, _ = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model.predict_mean(x), ref(x), atol=1e-5, rtol=0)


@requires_physicsnemo
def test_missing_and_misshapen_weights_are_named(tmp_path):
    ref = _ref_regression()
    args = ref._args["__args__"]
    sd = dict(ref.state_dict())
    del sd["model.enc.16x16_conv.bias"]
    path = _write_mdlus(tmp_path / "m.mdlus", "UNet", args, _torch_bytes(sd))
    with pytest.raises(CheckpointError, match="missing.*regression.net.enc.L0_conv.bias"):
        import_mdlus(path)
    sd = dict(ref.state_dict())
    sd["model.enc.16x16_conv.bias"] = torch.zeros(3)
    path = _write_mdlus(tmp_path / "s.mdlus", "UNet", args, _torch_bytes(sd))
    with pytest.raises(CheckpointError, match=r"regression.net.enc.L0_conv.bias.*shape \(3,\)"):
        import_mdlus(path)


@requires_physicsnemo
def test_regression_and_residual_must_agree(tmp_path):
    _ref_regression().save(str(tmp_path / "reg.mdlus"))
    _ref_residual(cond=4).save(str(tmp_path / "res.mdlus"))
    with pytest.raises(MdlusError, match="residual condition has 4 channels"):
        import_mdlus(tmp_path / "reg.mdlus", tmp_path / "res.mdlus")
