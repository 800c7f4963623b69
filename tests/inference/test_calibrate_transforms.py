"""Calibration scales each target's CRPS by a std in the units the CRPS is in: a transformed
target's codec statistics are of the transformed values, so its scale comes from the truth (or,
without one, from the statistics decoded to physical units)."""

from __future__ import annotations

import numpy as np
import pytest

from corrdiff_xr.codec import Codec
from corrdiff_xr.data import open_pair, synthetic_dataset
from corrdiff_xr.inference.calibrate import calibrate, target_std
from corrdiff_xr.testing import tiny_corrdiff

EPS = 0.1


@pytest.fixture(scope="module")
def setup():
    ds = synthetic_dataset(ny=16, nx=16, nt=2, factor=4, chunks={"time": 1})
    pair = open_pair(ds)
    codec = Codec.from_pair(pair, transforms={"tp": {"kind": "log_eps", "eps": EPS}})
    return pair, tiny_corrdiff(codec, (16, 16))


def test_a_transformed_target_is_scaled_by_the_truths_own_std(setup):
    pair, model = setup
    truth = pair.dataset[list(model.codec.out_channels)].load()
    std = target_std(model, truth)
    assert std["tp"] == pytest.approx(float(np.std(truth["tp"].values.astype(np.float64))))
    log_std = model.codec.stats["tp"][1]  # of log(tp + eps): not a precipitation amount
    assert std["tp"] != pytest.approx(log_std)  # what the codec's std alone would give
    for name in ("t2m", "u10", "v10"):  # untransformed: the model's statistics, as before
        assert std[name] == model.codec.stats[name][1]


def test_without_a_truth_the_statistics_are_decoded_to_physical_units(setup):
    _, model = setup
    mean, sd = model.codec.stats["tp"][:2]
    expected = (np.exp(mean + sd) - np.exp(mean - sd)) / 2  # log_eps: x = exp(t) - eps
    assert target_std(model)["tp"] == pytest.approx(expected)
    assert target_std(model)["t2m"] == model.codec.stats["t2m"][1]


def test_calibrate_averages_the_crps_over_the_physical_scales(setup):
    pair, model = setup
    truth = pair.dataset[list(model.codec.out_channels)].load()
    std = target_std(model, truth)
    result = calibrate(pair, model, candidates=[{"solver": "euler", "num_steps": 2}], members=2)
    (row,) = result.table
    per = row["per_target"]  # each target's fair CRPS in its own units
    assert row["crps_fair"] == pytest.approx(np.mean([per[n]["crps_fair"] / std[n] for n in per]))
