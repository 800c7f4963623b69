"""The shipped configs of the objectives (``direct_mini``, ``tedm_mini``, ``flow_mini``,
``dit_flow_mini``) run from another source with tiny sizes: each loads, trains a step on the
demo catalog's ``demo_tiny`` entry, records its objective in the checkpoint, samples, and its
loss on a batch is not the residual Gaussian EDM loss (the objective is not ignored)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import xarray as xr

from corrdiff_xr.config import ConfigError, TrainRunConfig
from corrdiff_xr.testing import TINY_NETWORK
from corrdiff_xr.training import load_run_config, train

#: each config's ``edm`` keys that the checkpoint header must carry
EXPECTED = {
    "direct_mini": {"objective": "direct"},
    "tedm_mini": {"nu": 5.0},
    "flow_mini": {"objective": "direct", "flow": "x"},
    "dit_flow_mini": {"objective": "direct", "flow": "x"},
}
TINY_DIT = "{patch_size: 4, hidden_size: 32, depth: 1, num_heads: 2}"


def _tiny(name: str, cache, out) -> list[str]:
    """Overrides that point ``name`` at the 16 x 16 demo entry with a one-step budget."""
    shape = [f"network.options={TINY_DIT}"] if name.startswith("dit") else [
        f"network.{key}={json.dumps(getattr(TINY_NETWORK, key))}"
        for key in ("model_channels", "channel_mult", "num_blocks", "attn_resolutions")
    ]  # fmt: skip
    return [
        "data.source=catalog:demo/demo_tiny",
        f"data.catalog_params={{cache_dir: {cache}}}",
        *shape,
        "training.duration=2",
        "training.total_batch_size=2",
        "training.checkpoint_every=2",
        "training.log_every=2",
        "training.progress=false",
        "training.loader.num_workers=0",
        f"training.output_dir={out}",
    ]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("demo_cache")


@pytest.fixture(scope="module")
def regression(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("regression")
    return train(load_run_config("regression_mini", _tiny("regression_mini", cache, out)))


def test_each_objective_config_loads_as_shipped_with_its_objective():
    for name, edm in EXPECTED.items():
        # tedm_mini names its regression run's output; any existing file stands in for it here
        extra = [f"training.regression_checkpoint={__file__}"] if name == "tedm_mini" else []
        cfg = load_run_config(name, extra)
        assert cfg.task == "diffusion"
        assert {key: getattr(cfg.edm, key) for key in edm} == edm


def _batch(model, pair):
    from types import SimpleNamespace

    codec = model.codec
    sources = xr.merge([pair.inputs_on_fine[list(codec.inputs)], pair.static_fields]).compute()
    x = torch.from_numpy(codec.encode_inputs(sources))
    y = torch.from_numpy(codec.encode_targets(pair.fine[list(codec.targets)].compute()))
    return SimpleNamespace(inputs=x, targets=y, offsets=None, lead_time=None)


def _loss(cfg: TrainRunConfig, model, batch) -> torch.Tensor:
    from corrdiff_xr.training.objective import objective

    torch.manual_seed(0)  # the same sigma and noise draws for every objective
    with torch.no_grad():
        loss, _ = objective(cfg, model)(model.residual, batch)
    return loss


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_objective_config_trains_records_its_objective_and_samples(
    name, cache, regression, tmp_path
):
    from corrdiff_xr.data import open_source
    from corrdiff_xr.inference import downscale
    from corrdiff_xr.model import CorrDiff, read_checkpoint_header

    overrides = _tiny(name, cache, tmp_path / "run")
    if name == "tedm_mini":
        reg = regression.output_dir / "model.safetensors"
        overrides.append(f"training.regression_checkpoint={reg}")
    cfg = load_run_config(name, overrides)
    result = train(cfg)
    assert result.completed and result.steps == 1 and np.isfinite(result.loss)
    path = result.output_dir / "model.safetensors"
    header = read_checkpoint_header(path)
    assert header["edm"].items() >= EXPECTED[name].items()
    assert header["residual_network"].get("arch", "songunet") == cfg.network.arch
    direct = cfg.edm.objective == "direct"
    assert (header["regression_network"] is None) == direct
    if direct:  # it trained without a regression checkpoint, which residual EDM refuses
        with pytest.raises(ConfigError, match="needs training.regression_checkpoint"):
            load_run_config(name, [*overrides, "edm.objective=residual"])

    model = CorrDiff.load(path).eval()
    pair = open_source("catalog:demo/demo_tiny", params={"cache_dir": str(cache)})
    batch = _batch(model, pair.isel(time=[0, 1]))
    if direct:  # its mean is zero: EDM (or flow) on the target itself
        assert not model.predict_mean(batch.inputs).any()
    gaussian_edm = dataclasses.replace(cfg.edm, nu=None, flow=None, flow_shift=1.0, P_std=1.2)
    plain = dataclasses.replace(cfg, edm=gaussian_edm)
    ours, theirs = _loss(cfg, model, batch), _loss(plain, model, batch)
    assert ours.shape == theirs.shape and torch.isfinite(ours).all()
    if cfg.edm.nu is not None or cfg.edm.flow is not None:
        assert not torch.allclose(ours, theirs, rtol=1e-3)
    else:
        torch.testing.assert_close(ours, theirs)  # the same draws: only the objective differs

    out = downscale(pair.isel(time=[2]), str(path), members=2, seed=3, steps=2)
    out = out.compute(scheduler="sync")
    assert set(out.data_vars) == set(model.codec.targets)
    for var in out.data_vars:
        assert out[var].sizes["member"] == 2 and np.isfinite(out[var].values).all()


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda h: h["edm"].update(flow_schedule="cosine"), r"\['flow_schedule'\] in 'edm'"),
        (lambda h: h.update(regression_network=None), "regression_network must be"),
    ],
)
def test_a_header_with_objective_keys_this_reader_lacks_is_refused_not_misread(edit, named):
    """The objective keys bump no ``format_version`` (a flow checkpoint is still version 1-3):
    what keeps a reader that predates a key from sampling the model as residual Gaussian EDM
    is that headers are read strictly. A newer key, or a missing regression net without
    ``objective: direct``, is refused naming the key."""
    from corrdiff_xr.model import CheckpointError, CorrDiff, shipped_model_path

    header = CorrDiff.load(shipped_model_path()).config_dict()
    assert CorrDiff.from_config_dict(json.loads(json.dumps(header))).edm_config.flow is None
    edit(header)
    with pytest.raises(CheckpointError, match=named):
        CorrDiff.from_config_dict(header)
