"""Missing targets (NaN over the sea, outside radar coverage) in the training losses.

The property: a masked pixel changes neither the loss nor any gradient, and the loss is
normalised by the valid pixels, so it equals the loss of the valid part computed by hand.
"""

from __future__ import annotations

import pytest
import torch

from corrdiff_xr.codec import Codec
from corrdiff_xr.config import EDMConfig
from corrdiff_xr.edm import loss_weight, regression_loss, residual_loss
from corrdiff_xr.patching import take_patches
from corrdiff_xr.testing import tiny_corrdiff

EDM = EDMConfig()
H = W = 16


@pytest.fixture
def model():
    codec = Codec(("a", "b"), ("t", "u"), (), {n: (0.0, 1.0) for n in "abtu"})
    return tiny_corrdiff(codec, (H, W))


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, H, W, generator=g)
    y = torch.randn(2, 2, H, W, generator=g)
    sea = torch.zeros(H, W, dtype=torch.bool)
    sea[:, : W // 2] = True  # half the domain masked, as a land-only target
    sea[3, 12] = True  # and a lake
    masked = y.masked_fill(sea, float("nan"))
    return x, y, masked, ~sea.expand_as(y)


def _grads(net):
    return [p.grad.clone() for p in net.parameters() if p.grad is not None]


def _regression(model, x, y):
    net = model.regression
    net.zero_grad()
    loss = regression_loss(lambda v: model.predict_mean(v), x, y)
    loss.backward()
    return loss.detach(), _grads(net)


def test_masked_regression_loss_and_gradients_are_those_of_the_valid_pixels(model, data):
    x, y, masked, valid = data
    model.train()
    loss, grads = _regression(model, x, masked)
    # by hand: squared error over the valid pixels only, divided by their number
    net = model.regression
    net.zero_grad()
    err = (model.predict_mean(x) - y) ** 2
    ref = err[valid].sum() / valid.sum()
    ref.backward()
    assert torch.isfinite(loss) and loss == pytest.approx(ref.item(), rel=1e-6)
    for got, want in zip(grads, _grads(net)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    # what the targets held under the mask does not matter: other values, same NaN mask
    other = torch.where(valid, y, y + 1e3).masked_fill(~valid, float("nan"))
    loss2, grads2 = _regression(model, x, other)
    assert loss2 == loss
    assert all(torch.equal(a, b) for a, b in zip(grads, grads2))


def test_a_field_without_missing_values_gives_the_unmasked_loss_bit_for_bit(model, data):
    x, y, _, _ = data
    with torch.no_grad():
        pred = model.predict_mean(x)
        assert torch.equal(regression_loss(lambda v: pred, x, y), ((pred - y) ** 2).mean())
        sigma, noise = torch.full((2,), 0.7), torch.randn_like(y)
        r = y - pred
        ident = lambda v, s, **_: v * 0.5
        want = (
            loss_weight(sigma.reshape(-1, 1, 1, 1), sigma_data=EDM.sigma_data)
            * ((r + 0.7 * noise) * 0.5 - r) ** 2
        )
        got = residual_loss(ident, x, y, edm=EDM, mean=pred, sigma=sigma, noise=noise)
        assert torch.equal(got, want.mean())


@pytest.mark.parametrize("patched", [False, True])
def test_masked_residual_loss_and_gradients_are_those_of_the_valid_pixels(model, data, patched):
    x, y, masked, valid = data
    model.train()
    with torch.no_grad():
        mean = model.predict_mean(x)
    patch = (8, 8) if patched else None
    origins = torch.tensor([[0, 4], [8, 8], [5, 0]]) if patched else None
    rows = 2 * (3 if patched else 1)
    hw = patch or (H, W)
    sigma = torch.linspace(0.3, 3.0, rows)
    noise = torch.randn(rows, 2, *hw, generator=torch.Generator().manual_seed(5))
    net = model.residual

    def denoiser(v, s, *, condition, offsets):
        return net(v, s, condition=condition, offsets=offsets)

    def run(target):
        net.zero_grad()
        kw = dict(edm=EDM, mean=mean, sigma=sigma, noise=noise, patch=patch, origins=origins)
        loss = residual_loss(denoiser, x, target, **kw)
        loss.backward()
        return loss.detach(), _grads(net)

    loss, grads = run(masked)
    # by hand: the residual is 0 where the target is missing (the denoiser sees only noise
    # there), and only the valid pixels' weighted squared error counts, averaged over them
    r = torch.where(valid, y - mean, 0.0)
    ok = valid
    if patched:
        r, ok = take_patches(r, origins, patch), take_patches(valid.float(), origins, patch) > 0
    cond = torch.cat([mean, x], dim=1)
    if patched:
        cond = take_patches(cond, origins, patch)
        offsets = origins.repeat(2, 1)
    else:
        offsets = None
    net.zero_grad()
    s = sigma.reshape(-1, 1, 1, 1)
    err = (
        loss_weight(s, sigma_data=EDM.sigma_data)
        * (net(r + s * noise, sigma, condition=cond, offsets=offsets) - r) ** 2
    )
    ref = err[ok].sum() / ok.sum()
    ref.backward()
    assert torch.isfinite(loss) and loss == pytest.approx(ref.item(), rel=1e-5)
    for got, want in zip(grads, _grads(net)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    other = torch.where(valid, y, -y * 50).masked_fill(~valid, float("nan"))
    loss2, grads2 = run(other)
    assert loss2 == loss and all(torch.equal(a, b) for a, b in zip(grads, grads2))


def test_a_batch_with_no_valid_pixel_contributes_zero_loss_and_zero_gradient(model, data):
    x, y, _, _ = data
    model.train()
    loss, grads = _regression(model, x, torch.full_like(y, float("nan")))
    assert loss == 0 and all(torch.count_nonzero(g) == 0 for g in grads)
