"""The backbone table: a backbone registered from outside the package is trained, saved,
loaded (checked on the meta device) and sampled; SongUNet checkpoints read as before."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr
from _train_helpers import synthetic_store, tiny_config
from torch import nn

from corrdiff_xr.config import ConfigError, NetworkConfig, SamplerConfig, TrainRunConfig, from_dict
from corrdiff_xr.data import open_pair
from corrdiff_xr.inference import downscale
from corrdiff_xr.model import CheckpointError, CorrDiff, read_checkpoint_header
from corrdiff_xr.model.core import _HEADER_KEY
from corrdiff_xr.nn import BACKBONES, Backbone, network_dict, register_backbone
from corrdiff_xr.noise import patch_generator
from corrdiff_xr.testing import TINY_NETWORK
from corrdiff_xr.training import train
from corrdiff_xr.training.identity import run_identity

TOY_OPTIONS = {"hidden": 8}


class ToyNet(nn.Module):
    """Two convolutions with SongUNet's call signature; the noise label is one more channel."""

    def __init__(self, cfg, *, in_channels, out_channels, img_shape):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        hidden = cfg.options["hidden"]
        self.conv0 = nn.Conv2d(in_channels + 1, hidden, 3, padding=1)
        self.conv1 = nn.Conv2d(hidden, out_channels, 3, padding=1)

    @property
    def dtype(self):
        return self.conv0.weight.dtype

    def forward(self, x, noise_labels, *, offsets=None, lead_time=None):
        x = x.to(self.dtype)
        n, _, h, w = x.shape
        noise = noise_labels.to(x.dtype).reshape(-1, 1, 1, 1).expand(n, 1, h, w)
        return self.conv1(F.silu(self.conv0(torch.cat([x, noise], dim=1))))


def _toy_shape(cfg, shape, what):
    if shape[0] % 2 or shape[1] % 2:
        raise ConfigError(f"{what} {shape[0]}x{shape[1]}: the toy backbone needs even sides")


def _toy_config(cfg, what, error):
    hidden = cfg.options.get("hidden")
    if set(cfg.options) != {"hidden"} or not isinstance(hidden, int) or not 1 <= hidden <= 64:
        raise error(f"{what}.options must be {{hidden: 1..64}}, got {cfg.options!r:.100}")


TOY = Backbone(build=ToyNet, check_shape=_toy_shape, check_config=_toy_config)


@pytest.fixture(scope="module")
def toy():
    register_backbone("toy", TOY)  # from outside the package, as a user would
    yield "toy"
    del BACKBONES["toy"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("data") / "syn.zarr")


def _toy_run(store, out, **kw):
    data = tiny_config(store, out, duration=4, **kw)
    data["network"].update(arch="toy", options=TOY_OPTIONS)
    return from_dict(TrainRunConfig, data)


@pytest.fixture(scope="module")
def toy_runs(toy, store, tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    reg = train(_toy_run(store, out / "reg"))
    reg_file = reg.output_dir / "model.safetensors"
    diff = train(
        _toy_run(store, out / "diff", task="diffusion", regression_checkpoint=str(reg_file))
    )
    return reg, diff


def test_a_registered_backbone_trains_saves_loads_and_samples(store, toy_runs):
    reg, diff = toy_runs
    assert reg.completed and diff.completed and np.isfinite([reg.loss, diff.loss]).all()
    path = diff.output_dir / "model.safetensors"
    header = read_checkpoint_header(path)
    for key in ("regression_network", "residual_network"):
        assert (header[key]["arch"], header[key]["options"]) == ("toy", TOY_OPTIONS)
    model = CorrDiff.load(path)  # built on the meta device by the table first
    assert isinstance(model.regression.net, ToyNet) and isinstance(model.residual.net, ToyNet)
    record = json.loads((diff.output_dir / "identity.json").read_text())
    assert record["identity"]["network"]["arch"] == "toy"

    # downscale from the file (a worker loads it through the table) equals direct calls
    pair = open_pair(str(store))
    out = downscale(
        pair.isel(time=[1]), str(path), members=2, seed=3, steps=2, batch_size=1
    ).compute(scheduler="sync")
    codec = model.codec
    sources = xr.merge([pair.inputs_on_fine[list(codec.inputs)], pair.static_fields]).isel(time=[1])
    x = torch.from_numpy(codec.encode_inputs(sources.compute()))
    t = sources.time.values[0]
    for m in range(2):
        direct = model.sample(
            x,
            generators=[patch_generator(3, t, m, (0, 0))],
            sampler=SamplerConfig(num_steps=2),
            offsets=torch.zeros(1, 2, dtype=torch.long),
        )
        decoded = codec.decode_targets(direct, sources)
        for name in codec.targets:
            np.testing.assert_array_equal(out[name].values[m], decoded[name].values)
    assert not np.allclose(out.t2m.values[0], out.t2m.values[1])  # the noise reaches the toy


def test_the_backbone_shape_check_guards_downscaling(store, toy_runs):
    path = toy_runs[1].output_dir / "model.safetensors"
    with pytest.raises(ConfigError, match=r"patch 7x7: the toy backbone needs even sides"):
        downscale(open_pair(str(store)), str(path), patch=7, overlap=2)


def test_a_header_the_toy_weights_do_not_fit_is_refused_by_the_meta_build(toy_runs, tmp_path):
    from safetensors.torch import load_file, safe_open, save_file

    src = toy_runs[1].output_dir / "model.safetensors"
    with safe_open(str(src), framework="pt") as f:
        header = json.loads(f.metadata()[_HEADER_KEY])
    header["residual_network"]["options"] = {"hidden": 9}
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(src), bad, metadata={_HEADER_KEY: json.dumps(header)})
    with pytest.raises(
        CheckpointError,
        match=r"residual.net.conv0.bias. has shape \(8,\), the model expects \(9,\)",
    ):
        CorrDiff.load(bad)
    # options beyond the backbone's limits are refused before anything is built
    header["residual_network"]["options"] = {"hidden": 10**9}
    with pytest.raises(CheckpointError, match=r"residual_network.options must be"):
        CorrDiff.from_config_dict(header)


def test_an_unknown_arch_is_refused_in_one_line_naming_the_known(toy, store, tmp_path):
    data = tiny_config(store, tmp_path / "run")
    data["network"]["arch"] = "transformer9000"
    with pytest.raises(ConfigError) as err:
        train(from_dict(TrainRunConfig, data))
    message = str(err.value)
    assert "\n" not in message
    assert "network.arch 'transformer9000' is not a known backbone" in message
    assert "['dit', 'framed', 'songunet', 'toy']" in message


def test_songunet_takes_no_options_and_a_header_with_an_unknown_arch_is_refused(toy):
    model = CorrDiff(
        img_shape=(16, 16),
        regression_network=dataclasses.replace(TINY_NETWORK, embedding_type="zero"),
        residual_network=None,
        in_channels=3,
        out_channels=2,
    )
    header = model.config_dict()
    bogus = {**header, "regression_network": {**header["regression_network"], "arch": "dit9"}}
    with pytest.raises(CheckpointError, match=r"regression_network.arch 'dit9' .*'songunet'"):
        CorrDiff.from_config_dict(bogus)
    opts = {**header, "regression_network": {**header["regression_network"], "options": {"a": 1}}}
    with pytest.raises(CheckpointError, match=r"regression_network.options \['a'\] .*songunet"):
        CorrDiff.from_config_dict(opts)


def test_songunet_checkpoints_headers_and_identities_are_unchanged(store, tmp_path):
    from corrdiff_xr.model import shipped_model_path

    path = shipped_model_path()
    stored = read_checkpoint_header(path)
    header = CorrDiff.load(path).config_dict()
    # the shipped file predates checkpoint_activations and padding; nothing else is added
    since = {"checkpoint_activations": False, "padding": "reflect"}
    for key in ("regression_network", "residual_network"):
        assert header[key] == {**stored[key], **since}
        assert list(header[key]) == [*stored[key], *since]  # same keys, same order: same bytes
    plain = network_dict(TINY_NETWORK)
    assert list(plain) == [f.name for f in dataclasses.fields(NetworkConfig)][:-2]
    assert plain["padding"] == "reflect"  # the last field written before arch and options
    cfg = from_dict(TrainRunConfig, tiny_config(store, tmp_path / "run"))
    identity = run_identity(cfg, open_pair(str(store)))
    assert not {"arch", "options"} & set(identity["network"])


def test_register_backbone_refuses_a_taken_name_or_a_non_backbone():
    with pytest.raises(ValueError, match="'songunet' is already registered"):
        register_backbone("songunet", TOY)
    with pytest.raises(TypeError, match="needs a Backbone"):
        register_backbone("toy2", ToyNet)
    assert "toy2" not in BACKBONES
