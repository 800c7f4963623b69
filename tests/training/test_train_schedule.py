from __future__ import annotations

import math

import pytest

from corrdiff_xr.training.schedule import accumulation_rounds, learning_rate


def test_learning_rate_ramps_up_linearly_then_holds():
    kw = {"lr": 1e-3, "rampup": 1000}
    assert learning_rate(0, **kw) == 0.0
    assert learning_rate(250, **kw) == pytest.approx(2.5e-4)
    assert learning_rate(1000, **kw) == pytest.approx(1e-3)
    assert learning_rate(10**7, **kw) == pytest.approx(1e-3)


def test_learning_rate_decays_stepwise_after_the_ramp():
    kw = {"lr": 1.0, "rampup": 100, "decay": 0.5, "decay_every": 1000}
    assert learning_rate(1099, **kw) == 1.0
    assert learning_rate(1100, **kw) == 0.5
    assert learning_rate(3100, **kw) == 0.125


def test_zero_rampup_with_decay_does_not_collapse_the_learning_rate():
    # The reference multiplies the optimiser's rate in place when rampup is 0, so after k steps
    # the rate is lr * decay**(sum of floor terms) and vanishes; ours depends on nimg only.
    kw = {"lr": 2e-4, "rampup": 0, "decay": 0.7, "decay_every": 10_000}
    rates = [learning_rate(n, **kw) for n in range(0, 10_000, 256)]
    assert rates == [2e-4] * len(rates)
    assert learning_rate(25_000, **kw) == pytest.approx(2e-4 * 0.7**2)
    assert learning_rate(25_000, **kw) == learning_rate(25_000, **kw)  # no hidden state


def test_learning_rate_rejects_nonsense():
    with pytest.raises(ValueError, match="decay_every"):
        learning_rate(5, lr=1.0, decay_every=0)


@pytest.mark.parametrize(
    ("total", "per_device", "world", "rounds"), [(256, 64, 1, 4), (256, 32, 2, 4), (8, 8, 1, 1)]
)
def test_accumulation_rounds_make_up_the_total_batch(total, per_device, world, rounds):
    assert accumulation_rounds(total, per_device, world) == rounds
    assert per_device * rounds * world == total


def test_accumulation_rounds_refuse_a_total_that_does_not_divide():
    with pytest.raises(ValueError, match="not a multiple"):
        accumulation_rounds(10, 4, 1)
    assert math.isfinite(learning_rate(0, lr=1.0))
