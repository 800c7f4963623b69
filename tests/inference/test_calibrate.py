"""Sampler calibration: the chosen setting obeys the rule (fair CRPS within the tolerance of
the baseline's, spread-skill closest to 1), the fair CRPS ranks a calibrated ensemble first
(properscoring's does not), and a calibrated checkpoint's defaults are what downscale uses
when no sampler is given."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from corrdiff_xr.cli import main
from corrdiff_xr.codec import Codec
from corrdiff_xr.config import SamplerConfig
from corrdiff_xr.data import open_pair, synthetic_dataset
from corrdiff_xr.inference import downscale
from corrdiff_xr.inference.calibrate import (
    calibrate,
    ensemble_scores,
    network_calls,
    target_std,
)
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
    ok = [
        r
        for r in rows
        if r["crps_fair"] <= (1 + tolerance) * rows[0]["crps_fair"]
        and r["crps_fair_diff"][1] <= tolerance  # non-inferior at 95 % (block bootstrap)
    ]
    assert rows[0]["crps_fair_diff"] == (0.0, 0.0)  # the baseline against itself
    best = min(ok, key=lambda r: (abs(r["spread_skill"] - 1), r["calls"]))
    assert [r["chosen"] for r in rows].count(True) == 1 and best["chosen"]
    assert network_calls(result.chosen) == best["calls"]
    assert result.chosen == SamplerConfig(**best["sampler"])
    if tolerance == 0.0:  # nothing may be worse than the baseline
        assert all(r["crps_fair"] <= rows[0]["crps_fair"] for r in rows if r["chosen"])
    # the scores are the model's: each target's CRPS over its std in the model's statistics
    std = target_std(model)
    assert std == {n: model.codec.stats[n][1] for n in model.codec.out_channels}
    per = rows[0]["per_target"]  # and each target's in its own units
    assert np.mean([per[n]["crps_fair"] / std[n] for n in std]) == pytest.approx(
        rows[0]["crps_fair"]
    )
    assert per["t2m"]["units"] == pair.dataset["t2m"].attrs["units"] and per["t2m"]["mae"] > 0


def _gaussian_crps(spread: float, members: int, fair: bool) -> float:
    """Expected ensemble CRPS of ``members`` draws of N(0, spread^2) for a N(0, 1) truth:
    E|X - y| - E|X - X'| (1 - 1/M or 1) / 2, with E|X - y| = sqrt(2 (1 + s^2) / pi) and
    E|X - X'| = 2 s / sqrt(pi)."""
    pairs = 2 * spread / np.sqrt(np.pi)
    return np.sqrt(2 * (1 + spread**2) / np.pi) - pairs * (1 if fair else 1 - 1 / members) / 2


def test_the_fair_crps_ranks_the_calibrated_ensemble_first_properscorings_does_not():
    rng = np.random.default_rng(0)
    n, members = 200_000, 4
    truth = xr.Dataset({"t": ("point", rng.standard_normal(n))})
    noise = rng.standard_normal((members, n))
    scores = {}
    for spread in (1.0, 0.7):
        ens = xr.Dataset({"t": (("member", "point"), spread * noise)})
        scores[spread] = ensemble_scores(ens, truth, {"t": 2.0})
        for key, fair in (("crps", False), ("crps_fair", True)):  # known answers, over std 2
            expected = _gaussian_crps(spread, members, fair) / 2.0
            assert scores[spread][key] == pytest.approx(expected, rel=0.01)
    assert scores[1.0]["spread_skill"] == pytest.approx(1.0, abs=0.02)
    assert scores[0.7]["crps"] < scores[1.0]["crps"]  # properscoring prefers the narrow one
    assert scores[1.0]["crps_fair"] < scores[0.7]["crps_fair"]


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
    units = {n: pair.dataset[n].attrs["units"] for n in model.codec.out_channels}
    for n, u in units.items():  # each target's scores in its own units
        assert f"{n} crps_fair [{u}]" in printed and f"{n} mae [{u}]" in printed
    calibrated = CorrDiff.load(out)
    chosen = calibrated.sampler_config
    assert chosen is not None and CorrDiff.load(path).sampler_config is None  # input untouched
    one = pair.isel(time=[0])
    got = downscale(one, calibrated, members=2, seed=1).compute(scheduler="sync")
    want = downscale(one, model, members=2, seed=1, sampler=chosen).compute(scheduler="sync")
    for name in got.data_vars:
        np.testing.assert_array_equal(got[name].values, want[name].values)
    assert main(argv) == 2  # never replaces an existing file


def test_calibrating_in_bf16_scores_every_candidate_in_bf16_and_saves_it(setup, tmp_path, capsys):
    pair, model, path = setup
    result = calibrate(pair, model, candidates=CANDIDATES[:2], members=2, precision="bf16")
    assert [r["sampler"]["precision"] for r in result.table] == ["bf16", "bf16"]
    assert result.chosen.precision == "bf16" and "heun/bf16" in result.format()
    fp32 = calibrate(pair, model, candidates=CANDIDATES[:2], members=2)
    assert fp32.table[0]["crps_fair"] != result.table[0]["crps_fair"]  # bf16 did run
    store, out = tmp_path / "valid.zarr", tmp_path / "bf16.safetensors"
    pair.dataset.to_zarr(store)
    argv = ["calibrate", "--checkpoint", str(path), "--data", str(store), "--members", "2",
            "--time-range", "2020-01-01T00", "2020-01-01T01", "--precision", "bf16",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    calibrated = CorrDiff.load(out)
    assert calibrated.sampler_config is not None
    assert calibrated.sampler_config.precision == "bf16"
    # calibrating the calibrated model again keeps its precision for the default candidates
    again = calibrate(pair.isel(time=[0]), calibrated, members=2, confidence=None)
    assert {r["sampler"]["precision"] for r in again.table} == {"bf16"}
    with pytest.raises(ValueError, match="precision"):
        calibrate(pair, model, candidates=CANDIDATES[:1], members=2, precision="fp16")


def _rows(per_time_list):
    return [
        {"crps_fair": float(np.mean(t)), "crps_fair_by_time": list(t), "spread_skill": ss,
         "calls": c}
        for t, ss, c in per_time_list
    ]  # fmt: skip


def test_a_candidate_whose_crps_may_be_worse_than_the_tolerance_is_not_chosen():
    """Non-inferiority: a candidate whose mean fair CRPS is within the tolerance but whose
    per-time differences are too noisy to show it is refused; one that is within it at every
    time is accepted."""
    from corrdiff_xr.inference.calibrate import _attach_intervals, most_calibrated

    rng = np.random.default_rng(0)
    base = 1.0 + 0.1 * rng.standard_normal(48)
    noisy = base * (1 + 0.2 * rng.standard_normal(48))
    noisy += base.mean() - noisy.mean()  # same mean: within any tolerance by point estimate
    steady = base * 1.002  # 0.2 % worse at every time
    rows = _rows([(base, 1.3, 35), (noisy, 1.0, 7), (steady, 1.1, 7)])
    _attach_intervals(rows, confidence=0.95, block_length=None, seed=0)
    lo, hi = rows[1]["crps_fair_diff"]
    assert lo < 0 < hi and hi > 0.01  # cannot be shown within 1 %
    assert rows[2]["crps_fair_diff"] == pytest.approx((0.002, 0.002), abs=2e-4)
    assert most_calibrated(rows, tolerance=0.01) == 2  # the steady one, not the noisy one
    for row in rows:  # by point estimates alone the noisy one (spread-skill 1.0) would win
        row.pop("crps_fair_diff")
    assert most_calibrated(rows, tolerance=0.01) == 1


def test_calibrate_reports_the_interval_and_its_table_shows_it(setup):
    pair, model, _ = setup
    result = calibrate(pair, model, candidates=CANDIDATES[:2], members=3, confidence=0.9)
    lo, hi = result.table[1]["crps_fair_diff"]
    assert lo <= (result.table[1]["crps_fair"] / result.table[0]["crps_fair"] - 1) <= hi
    assert "vs baseline" in result.format() and "%" in result.format().splitlines()[2]
    off = calibrate(pair, model, candidates=CANDIDATES[:2], members=3, confidence=None)
    assert "crps_fair_diff" not in off.table[1]
