"""CorrDiff module: predict_mean / sample contract, seeds and batching, safe checkpoints."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
from safetensors import safe_open

from corrdiff_xr.codec import Codec
from corrdiff_xr.config import EDMConfig, SamplerConfig
from corrdiff_xr.model import CheckpointError, CorrDiff
from corrdiff_xr.testing import TINY_NETWORK as TINY

FAST = SamplerConfig(num_steps=3)


def _codec() -> Codec:
    stats = {
        "t2m_coarse": (280.0, 5.0),
        "u_coarse": (0.0, 3.0),
        "orography": (100.0, 50.0),
        "t2m": (281.0, 6.0),
        "tp": (0.1, 0.2),
    }
    return Codec(
        inputs=("t2m_coarse", "u_coarse"),
        targets=("t2m", "tp"),
        static=("orography",),
        stats=stats,
    )


def _model(residual: bool = True, **kw) -> CorrDiff:
    torch.manual_seed(0)
    model = CorrDiff(
        _codec(),
        img_shape=(8, 16),
        regression_network=dataclasses.replace(TINY, embedding_type="zero"),
        residual_network=TINY if residual else None,
        **kw,
    )
    with torch.no_grad():  # O(1) outputs instead of the near-zero initial output layers
        for p in model.parameters():
            if p.ndim > 1:
                p.copy_(torch.randn_like(p) * 0.3 / p[0].numel() ** 0.5)
    return model.eval()


def _gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_channels_come_from_the_codec():
    model = _model()
    assert (model.in_channels, model.out_channels) == (3, 2)
    assert model.regression.net.in_channels == 2 + 3  # zero latent + inputs
    assert model.residual.net.in_channels == 2 + 2 + 3  # latent + mean + inputs


def test_residual_condition_omits_the_mean_without_hr_mean_conditioning():
    model = _model(edm=EDMConfig(hr_mean_conditioning=False))
    assert model.residual.net.in_channels == 2 + 3


def test_predict_mean_shape_and_input_check():
    model = _model()
    assert model.predict_mean(torch.randn(2, 3, 8, 16)).shape == (2, 2, 8, 16)
    with pytest.raises(ValueError, match=r"\(N, 3, h, w\)"):
        model.predict_mean(torch.randn(2, 4, 8, 16))


def test_a_member_does_not_depend_on_how_members_are_batched():
    model = _model()
    x = torch.randn(1, 3, 8, 16).expand(3, -1, -1, -1)
    together = model.sample(x, generators=_gens(10, 11, 12), sampler=FAST)
    alone = model.sample(x[:1], generators=_gens(11), sampler=FAST)
    # equal up to float32 kernel differences between batch sizes (different noise would be O(1))
    torch.testing.assert_close(together[1:2], alone, atol=1e-3, rtol=1e-3)
    assert (together[0] - together[1]).abs().max() > 1e-3  # different seeds, different members


def test_same_seed_gives_the_same_member_and_precomputed_mean_is_used():
    model = _model()
    x = torch.randn(2, 3, 8, 16)
    a = model.sample(x, generators=_gens(1, 2), sampler=FAST)
    b = model.sample(x, generators=_gens(1, 2), sampler=FAST)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    mean = model.predict_mean(x).detach()
    c = model.sample(x, generators=_gens(1, 2), sampler=FAST, mean=mean + 1.0)
    # the given mean is what the member is built on (not recomputed): shifting it moves the member
    assert (c - a).mean() > 0.5


def test_sample_is_mean_plus_residual_and_needs_one_generator_per_sample():
    model = _model()
    x = torch.randn(2, 3, 8, 16)
    with pytest.raises(ValueError, match="one generator per sample"):
        model.sample(x, generators=_gens(1), sampler=FAST)
    regression_only = _model(residual=False)
    torch.testing.assert_close(
        regression_only.sample(x, generators=_gens(1, 2)),
        regression_only.predict_mean(x),
    )


def test_patches_at_offsets_run_through_sample():
    model = _model()
    x = torch.randn(2, 3, 8, 8)
    out = model.sample(
        x, generators=_gens(1, 2), sampler=FAST, offsets=torch.tensor([[0, 0], [0, 8]])
    )
    assert out.shape == (2, 2, 8, 8) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="offsets must have shape"):
        model.predict_mean(x, offsets=torch.zeros(3, 2))


def test_checkpoint_round_trip_restores_outputs_codec_and_configs(tmp_path):
    model = _model(edm=EDMConfig(sigma_data=0.7))
    path = model.save(tmp_path / "ck" / "model.safetensors")
    loaded = CorrDiff.load(path)
    assert loaded.codec == model.codec
    assert (loaded.regression_config, loaded.residual_config, loaded.edm_config) == (
        model.regression_config,
        model.residual_config,
        model.edm_config,
    )
    x = torch.randn(2, 3, 8, 16)
    torch.testing.assert_close(loaded.eval().predict_mean(x), model.predict_mean(x), atol=0, rtol=0)
    torch.testing.assert_close(
        loaded.sample(x, generators=_gens(3, 4), sampler=FAST),
        model.sample(x, generators=_gens(3, 4), sampler=FAST),
        atol=0,
        rtol=0,
    )


def test_checkpoint_is_plain_safetensors_with_a_json_header(tmp_path):
    path = _model().save(tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["corrdiff_xr"])
        keys = set(f.keys())
    assert header["codec"]["targets"] == ["t2m", "tp"]
    assert header["img_shape"] == [8, 16] and "torch" in header["versions"]
    assert "regression.net.enc.L0_conv.weight" in keys and "residual.net.map_layer0.weight" in keys


def test_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    model = _model()
    path = model.save(tmp_path / "m.safetensors")
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        _model(residual=False).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left


def test_loading_weights_of_another_shape_names_the_parameter(tmp_path):
    path = _model().save(tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    tensors["residual.net.map_layer0.weight"] = torch.zeros(3, 3)
    from safetensors.torch import save_file

    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match=r"residual.net.map_layer0.weight.*shape \(3, 3\)"):
        CorrDiff.load(tmp_path / "bad.safetensors")
    del tensors["residual.net.map_layer0.weight"]
    save_file(tensors, str(tmp_path / "missing.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="missing.*residual.net.map_layer0.weight"):
        CorrDiff.load(tmp_path / "missing.safetensors")


def test_loading_something_else_gives_a_clear_error(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        CorrDiff.load(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="no corrdiff_xr header"):
        CorrDiff.load(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError):
        CorrDiff.load(tmp_path / "absent.safetensors")


def test_model_without_codec_needs_channel_counts():
    with pytest.raises(ValueError, match="codec or both in_channels and out_channels"):
        CorrDiff(img_shape=(8, 8), regression_network=TINY, residual_network=None)
    model = CorrDiff(
        img_shape=(8, 8),
        in_channels=4,
        out_channels=1,
        regression_network=TINY,
        residual_network=None,
    )
    assert model.codec is None and model.regression.net.in_channels == 5


def test_a_target_mask_travels_in_the_checkpoint_and_a_lying_header_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    model = _model()
    plain = model.save(tmp_path / "plain.safetensors")
    with safe_open(str(plain), framework="pt") as f:
        header = json.loads(f.metadata()["corrdiff_xr"])
        assert "target_mask" not in f.keys()
    assert header["format_version"] == 1 and header["target_mask"] is False  # old readers
    valid = torch.ones(2, 8, 16, dtype=torch.bool)
    valid[0, :, :5] = False  # t2m over the sea
    model.set_target_mask(valid)
    with pytest.raises(ValueError, match=r"target_mask must have shape \(2, 8, 16\)"):
        model.set_target_mask(valid[:, :4])
    path = model.save(tmp_path / "masked.safetensors")
    loaded = CorrDiff.load(path)
    assert torch.equal(loaded.target_mask, valid)
    assert loaded.target_mask.dtype == torch.bool
    # a header that promises a mask the file lacks, or a mask of another shape, is refused
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    save_file({k: v for k, v in tensors.items() if k != "target_mask"}, tmp_path / "a", meta)
    with pytest.raises(CheckpointError, match="target_mask"):
        CorrDiff.load(tmp_path / "a")
    save_file({**tensors, "target_mask": valid[:, :4].contiguous()}, tmp_path / "b", meta)
    with pytest.raises(CheckpointError, match="target_mask"):
        CorrDiff.load(tmp_path / "b")
    bad = json.loads(meta["corrdiff_xr"])
    bad["target_mask"] = "yes"
    save_file(tensors, tmp_path / "c", {"corrdiff_xr": json.dumps(bad)})
    with pytest.raises(CheckpointError, match="target_mask must be true or false"):
        CorrDiff.load(tmp_path / "c")
    model.set_target_mask(None)
    assert model.target_mask is None and "target_mask" not in model.state_dict()
