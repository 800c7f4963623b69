"""Per-variable transforms and bounds: the trained space, physical outputs, their statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from corrdiff_xr.codec import Codec
from corrdiff_xr.config import ConfigError, TrainRunConfig, from_dict
from corrdiff_xr.data import compute_stats, open_pair, stats_dataset
from corrdiff_xr.transforms import Transform, TransformDomainError

RNG = np.random.default_rng(0)
N = 4, 6, 8  # (time, y, x)


def _wet(shape, scale):
    """Precipitation-like: 60 % exactly dry, a gamma-distributed tail."""
    amount = RNG.gamma(0.4, scale, shape)
    return np.where(RNG.random(shape) < 0.6, 0.0, amount).astype(np.float32)


# ERA5-like fields in their own units: tp (m, hourly), tcc (fraction), cloud cover in %,
# sshf (J m-2, hourly, both signs, heavy tails)
KINDS = {
    "log_eps": ("tp", {"kind": "log_eps", "eps": 1e-4}, _wet(N, 2e-3)),
    "log_eps_scaled": ("tp", {"kind": "log_eps", "eps": 0.1, "scale": 1e-3}, _wet(N, 2e-3)),
    "asinh": ("sshf", {"kind": "asinh", "scale": 5e4}, (RNG.standard_t(2, N) * 2e5).astype("f4")),
    "logit_eps": (
        "tcc",
        {"kind": "logit_eps", "eps": 1e-3},
        np.clip(RNG.normal(0.5, 0.5, N), 0, 1).astype("f4"),
    ),
    "logit_eps_percent": (
        "tcc",
        {"kind": "logit_eps", "eps": 1e-2, "scale": 100},
        np.clip(RNG.normal(50, 50, N), 0, 100).astype("f4"),
    ),
}


def _template(n_time=N[0]):
    return xr.Dataset(
        coords={
            "time": np.arange(n_time).astype("datetime64[h]"),
            "y": np.linspace(60.0, 50.0, N[1]),  # descending latitude
            "x": np.linspace(350.0, 357.5, N[2]),
        }
    )


def _codec(name, spec, values, bounds=None):
    t = Transform.from_dict(spec)
    moved = t(values)
    stats = {"t2m": (280.0, 10.0), name: (float(moved.mean()), float(moved.std()))}
    return Codec(("t2m",), (name,), (), stats, {}, {name: spec}, bounds or {})


@pytest.mark.parametrize("kind", KINDS)
def test_decode_of_encode_gives_the_values_back_to_float_precision(kind):
    name, spec, values = KINDS[kind]
    codec = _codec(name, spec, values)
    encoded = codec.encode_arrays({name: values}, role="targets")
    # the trained space is the transformed one: about standard normal, not the raw skew
    assert abs(float(encoded.mean())) < 1e-5 and float(encoded.std()) == pytest.approx(1, abs=1e-5)
    back = codec.decode_targets(encoded, _template())[name].values
    scale = spec.get("scale", 1.0) * spec.get("eps", 1.0)
    np.testing.assert_allclose(back, values, rtol=2e-5, atol=1e-5 * scale)
    if kind.startswith("log_eps"):  # the dry majority comes back dry to float precision
        dry = values == 0
        assert dry.mean() > 0.4 and np.abs(back[dry]).max() < 1e-5 * scale


FORMULAS = [
    ({"kind": "log_eps", "eps": 1e-4, "scale": 1e-3}, lambda x: np.log(x / 1e-3 + 1e-4)),
    ({"kind": "asinh", "scale": 50.0}, lambda x: np.arcsinh(x / 50.0)),
    (
        {"kind": "logit_eps", "eps": 0.01, "scale": 100},
        lambda x: np.log((x / 100 + 0.01) / (1.01 - x / 100)),
    ),
]


@pytest.mark.parametrize(("spec", "formula"), FORMULAS, ids=[f[0]["kind"] for f in FORMULAS])
def test_each_kind_is_the_documented_formula(spec, formula):
    x = np.array([0.0, 0.3, 2.0, 40.0, 99.0])
    np.testing.assert_allclose(Transform.from_dict(spec)(x), formula(x), rtol=1e-12)


def test_precipitation_is_never_negative_after_decoding_even_from_very_negative_output():
    name, spec, values = KINDS["log_eps"]
    codec = _codec(name, spec, values, bounds={"tp": [0, None]})
    network_output = np.linspace(-1e4, 3.0, N[0] * N[1] * N[2], dtype=np.float32).reshape(
        N[0], 1, N[1], N[2]
    )
    tp = codec.decode_targets(network_output, _template())["tp"].values
    assert np.isfinite(tp).all() and (tp >= 0).all() and tp.max() > 0
    # without the bound the inverse alone stays above -eps, the edge of its domain
    loose = _codec(name, spec, values).decode_targets(network_output, _template())["tp"].values
    assert loose.min() >= -1e-4 and loose.min() < 0


def test_bounds_clip_outputs_of_an_untransformed_variable_and_keep_missing_values():
    codec = Codec(
        ("t2m",), ("tcc",), (), {"t2m": (0, 1), "tcc": (0.5, 0.3)}, bounds={"tcc": [0, 1]}
    )
    out = np.array([-10.0, 0.0, 1.0, 10.0, np.nan], np.float32).reshape(1, 1, 1, 5)
    template = _template(1).isel(y=[0], x=slice(0, 5))
    tcc = codec.decode_targets(out, template)["tcc"].values.ravel()
    np.testing.assert_array_equal(tcc, np.float32([0.0, 0.5, 0.8, 1.0, np.nan]))


def test_statistics_are_of_the_transformed_values_with_missing_values_skipped():
    eps = 1e-4
    # x = eps (e^k - 1) has log(x + eps) = log(eps) + k: mean log(eps) + 1.5, std sqrt(1.25)
    x = (eps * np.expm1(np.arange(4.0)))[:, None, None] * np.ones((4, 3, 5))
    x[2, 1, 1] = np.nan  # one missing value in a chunk of its own below: skipped
    ds = xr.Dataset({"tp": (("time", "y", "x"), x)}).chunk({"time": 1, "y": 2})
    tr = Transform.from_dict({"kind": "log_eps", "eps": eps})
    stats = compute_stats(ds, transforms={"tp": tr}).compute()
    mean, std = stats["tp"].values
    k = np.arange(4.0).repeat(15)
    k = np.delete(k, 2 * 15 + 1 * 5 + 1)
    assert mean == pytest.approx(np.log(eps) + k.mean(), rel=1e-12)
    assert std == pytest.approx(k.std(), rel=1e-12)


def test_a_transformed_variable_gets_statistics_of_its_transformed_values_not_the_stored_raw_ones(
    tiny_synthetic,
):
    raw = compute_stats(tiny_synthetic).compute()
    stored = stats_dataset({n: tuple(raw[n].values) for n in raw.data_vars})
    pair = open_pair(tiny_synthetic, stats=stored)
    spec = {"kind": "log_eps", "eps": 0.1}
    codec = Codec.from_pair(
        pair, transforms={"tp": spec, "tp_coarse": spec}, bounds={"tp": [0, None]}
    )
    for name in ("tp", "tp_coarse"):
        moved = np.log(tiny_synthetic[name].values.astype(np.float64) + 0.1)
        assert codec.stats[name] == pytest.approx((moved.mean(), moved.std()), rel=1e-9)
    for name in ("t2m", "t2m_coarse", "orography"):  # untransformed: the stored statistics
        assert codec.stats[name] == tuple(stored[name].values)


def test_statistics_of_data_outside_the_domain_are_refused_naming_the_variable(tiny_synthetic):
    ds = tiny_synthetic.copy()
    ds["tp"] = ds["tp"].where(ds["y"] != ds["y"][3], -1.0)  # one row of negative amounts
    spec = {"kind": "log_eps", "eps": 0.1}
    with pytest.raises(
        TransformDomainError, match=r"^variable 'tp' has values outside \(-0.1, inf\)"
    ):
        Codec.from_pair(open_pair(ds), transforms={"tp": spec})


STATS = {"t2m_coarse": (280.0, 8.0), "orography": (300.0, 400.0), "t2m": (281.0, 9.0)}
ATTRS = {"t2m": {"units": "K", "long_name": "2 metre temperature"}}


def test_a_codec_without_transforms_serialises_exactly_as_before_they_existed():
    codec = Codec(("t2m_coarse",), ("t2m",), ("orography",), STATS, ATTRS)
    expected = {
        "inputs": ["t2m_coarse"],
        "targets": ["t2m"],
        "static": ["orography"],
        "stats": {"t2m_coarse": [280.0, 8.0], "orography": [300.0, 400.0], "t2m": [281.0, 9.0]},
        "attrs": {"t2m": {"units": "K", "long_name": "2 metre temperature"}},
    }
    assert json.dumps(codec.to_dict()) == json.dumps(expected)


def test_transforms_and_bounds_survive_the_checkpoint_json_round_trip():
    spec = {"kind": "logit_eps", "eps": 0.01, "scale": 100}
    codec = Codec(
        ("t2m_coarse",), ("t2m",), ("orography",), STATS, ATTRS, {"t2m": spec}, {"t2m": (0, None)}
    )
    data = json.loads(json.dumps(codec.to_dict()))
    assert data["transforms"] == {"t2m": spec} and data["bounds"] == {"t2m": [0.0, None]}
    assert Codec.from_dict(data) == codec


def test_data_outside_a_transform_domain_is_refused_naming_the_variable_and_nan_stays_missing():
    name, spec, values = KINDS["log_eps"]
    codec = _codec(name, spec, values)
    bad = values.copy()
    bad[0, 0, :3] = -1e-3  # below -eps: log of a negative amount
    with pytest.raises(
        TransformDomainError, match=r"^variable 'tp' has values .* \(3 in the block read\)"
    ):
        codec.encode_arrays({"tp": bad}, role="targets")
    missing = values.copy()
    missing[1, 2, 3] = np.nan
    y = codec.encode_arrays({"tp": missing}, role="targets")
    assert np.isnan(y[1, 0, 2, 3]) and np.isfinite(y).sum() == y.size - 1


BAD = [
    ({"transforms": {"tp": {"kind": "log"}}}, "data.transforms.tp.kind: 'log' is not one of"),
    (
        {"transforms": {"tp": {"kind": "log_eps"}}},
        "data.transforms.tp: {'kind': 'log_eps'} needs eps",
    ),
    ({"transforms": {"tp": {"kind": "log_eps", "eps": 0}}}, "data.transforms.tp.eps: 0 is not"),
    (
        {"transforms": {"u10": {"kind": "asinh", "eps": 1}}},
        "data.transforms.u10: {'kind': 'asinh', 'eps': 1} has unknown key(s) ['eps']",
    ),
    ({"transforms": {"tp": "log_eps"}}, "data.transforms.tp: expected a mapping"),
    ({"bounds": {"tp": [0]}}, "data.bounds.tp: expected 2 items"),
    ({"bounds": {"tp": [1, 0]}}, "data.bounds.tp: (1.0, 0.0) needs lower < upper"),
    ({"bounds": {"tp": [None, None]}}, "data.bounds.tp: (None, None) sets no limit"),
]


@pytest.mark.parametrize(("data", "message"), BAD, ids=[m for _, m in BAD])
def test_a_bad_declaration_is_one_line_naming_the_variable_and_key(data, message):
    with pytest.raises(ConfigError) as info:
        from_dict(TrainRunConfig, {"task": "regression", "data": {"source": "x.zarr", **data}})
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_declarations_must_name_variables_of_the_run_and_bounds_its_targets(tiny_synthetic):
    from corrdiff_xr.training.data import new_codec

    pair = open_pair(tiny_synthetic)

    def cfg(**data):
        return from_dict(TrainRunConfig, {"task": "regression", "data": {"source": "x", **data}})

    with pytest.raises(ConfigError, match=r"^data\.transforms\.precip: .* names no variable"):
        new_codec(cfg(transforms={"precip": {"kind": "asinh"}}), pair)
    with pytest.raises(ConfigError, match=r"^data\.bounds\.tp_coarse: .* is not a target"):
        new_codec(cfg(bounds={"tp_coarse": [0, None]}), pair)


def test_the_training_identity_holds_transforms_only_when_set(tiny_synthetic):
    from corrdiff_xr.training.identity import codec_identity, run_identity

    pair = open_pair(tiny_synthetic)
    plain = {"task": "regression", "data": {"source": "x"}}
    before = run_identity(from_dict(TrainRunConfig, plain), pair)["codec"]
    assert set(before) == {"inputs", "targets", "static", "attrs"}  # as recorded so far
    data = {"source": "x", "transforms": {"tp": {"kind": "log_eps", "eps": 0.1}}}
    declared = run_identity(from_dict(TrainRunConfig, {**plain, "data": data}), pair)["codec"]
    assert declared["transforms"] == {"tp": {"kind": "log_eps", "eps": 0.1, "scale": 1.0}}
    # diffusion keeps the regression codec's transforms; declaring others is refused
    reg = codec_identity(("a",), ("tp",), (), {}, transforms={"tp": {"kind": "asinh"}})
    diffusion = {**plain, "task": "diffusion", "data": data}
    diffusion["training"] = {"regression_checkpoint": "reg.safetensors"}
    with pytest.raises(ConfigError, match=r"^data\.transforms .* differs from the regression"):
        run_identity(from_dict(TrainRunConfig, diffusion), pair, codec=reg)


def test_a_tiny_run_trained_on_log_precipitation_decodes_non_negative_precipitation(tmp_path):
    import torch
    from _train_helpers import synthetic_store, tiny_config

    from corrdiff_xr.model import CorrDiff, read_checkpoint_header
    from corrdiff_xr.training import train

    store = synthetic_store(tmp_path / "syn.zarr")
    data = tiny_config(store, tmp_path / "run")
    data["data"]["transforms"] = {"tp": {"kind": "log_eps", "eps": 0.1}}
    data["data"]["bounds"] = {"tp": [0, None]}
    assert train(from_dict(TrainRunConfig, data)).completed
    path = tmp_path / "run" / "model.safetensors"
    assert read_checkpoint_header(path)["codec"]["transforms"]["tp"]["kind"] == "log_eps"
    model = CorrDiff.load(path)
    pair = open_pair(store)
    expected = np.log(pair.dataset["tp"].values.astype(np.float64) + 0.1)
    assert model.codec.stats["tp"] == pytest.approx((expected.mean(), expected.std()), rel=1e-9)
    fine = pair.fine.compute()
    x = model.codec.encode_inputs(xr.merge([pair.inputs_on_fine, pair.static_fields]))
    with torch.no_grad():
        mean = model.predict_mean(torch.from_numpy(x)).numpy()
    for out in (mean, mean - 1e3):  # the trained net, and one far below the dry state
        tp = model.codec.decode_targets(out, fine)["tp"].values
        assert np.isfinite(tp).all() and (tp >= 0).all()
