"""Sampler calibration: the chosen setting obeys the rule (CRPS within the tolerance of the
baseline's, spread-skill closest to 1), and a calibrated checkpoint's defaults are what
downscale uses when no sampler is given."""

from __future__ import annotations

import numpy as np
import pytest

from corrdiff_xr.cli import main
from corrdiff_xr.codec import Codec
from corrdiff_xr.config import SamplerConfig
from corrdiff_xr.data import open_pair, synthetic_dataset
from corrdiff_xr.inference import downscale
from corrdiff_xr.inference.calibrate import calibrate, network_calls
from corrdiff_xr.model import CorrDiff
from corrdiff_xr.testing import tiny_corrdiff

CANDIDATES = [
    {"solver": "heun", "num_steps": 3},
    {"solver": "dpmpp_2m", "num_steps": 3},
    {"solver": "heun", "num_steps": 3, "sigma_max": 5.0},
    {"solver": "euler", "num_steps": 2},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    ds = synthetic_dataset(ny=16, nx=16, nt=3, factor=4, chunks={"time": 1})
    pair = open_pair(ds)
    model = tiny_corrdiff(Codec.from_pair(pair), (16, 16))
    path = tmp_path_factory.mktemp("cal") / "model.safetensors"
    model.save(path)
    return pair, model, path


@pytest.mark.parametrize("tolerance", [0.0, 0.5])
def test_the_choice_is_the_best_calibrated_within_the_crps_tolerance(setup, tolerance):
    pair, model, _ = setup
    result = calibrate(pair, model, candidates=CANDIDATES, members=3, tolerance=tolerance)
    rows = result.table
    assert [r["sampler"]["solver"] for r in rows] == [c["solver"] for c in CANDIDATES]
    assert result.baseline == SamplerConfig(solver="heun", num_steps=3)
    ok = [r for r in rows if r["crps"] <= (1 + tolerance) * rows[0]["crps"]]
    best = min(ok, key=lambda r: (abs(r["spread_skill"] - 1), r["calls"]))
    assert [r["chosen"] for r in rows].count(True) == 1 and best["chosen"]
    assert network_calls(result.chosen) == best["calls"]
    assert result.chosen == SamplerConfig(**best["sampler"])
    if tolerance == 0.0:  # nothing may be worse than the baseline
        assert all(r["crps"] <= rows[0]["crps"] for r in rows if r["chosen"])


def test_a_calibrated_checkpoint_samples_with_its_defaults(setup, tmp_path, capsys):
    pair, model, path = setup
    store = tmp_path / "valid.zarr"
    pair.dataset.to_zarr(store)
    out = tmp_path / "calibrated.safetensors"
    argv = ["calibrate", "--checkpoint", str(path), "--data", str(store), "--members", "2",
            "--time-range", "2020-01-01T00", "2020-01-01T01", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "<- chosen" in printed and f"wrote {out}" in printed
    calibrated = CorrDiff.load(out)
    chosen = calibrated.sampler_config
    assert chosen is not None and CorrDiff.load(path).sampler_config is None  # input untouched
    one = pair.isel(time=[0])
    got = downscale(one, calibrated, members=2, seed=1).compute(scheduler="sync")
    want = downscale(one, model, members=2, seed=1, sampler=chosen).compute(scheduler="sync")
    for name in got.data_vars:
        np.testing.assert_array_equal(got[name].values, want[name].values)
    assert main(argv) == 2  # never replaces an existing file
