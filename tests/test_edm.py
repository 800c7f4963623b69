"""EDM training losses and noise-level sampling: known answers and what the denoiser sees."""

from __future__ import annotations

import math

import pytest
import torch

from corrdiff_xr.config import EDMConfig
from corrdiff_xr.edm import (
    loss_weight,
    regression_loss,
    residual_condition,
    residual_loss,
    sample_sigma,
)
from corrdiff_xr.patching import global_context, take_patches

EDM = EDMConfig()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 10, 12, generator=g)
    y = torch.randn(2, 2, 10, 12, generator=g)
    mean = torch.randn(2, 2, 10, 12, generator=g)
    return x, y, mean


def identity_denoiser(x_noisy, sigma, *, condition, offsets):
    return x_noisy


def test_sample_sigma_is_log_normal_with_the_given_parameters():
    sigma = sample_sigma(40_000, P_mean=-0.5, P_std=1.2, generator=torch.Generator().manual_seed(1))
    log = sigma.log().double()
    assert abs(log.mean().item() + 0.5) < 4 * 1.2 / 200
    assert abs(log.std().item() - 1.2) < 0.02
    assert sigma.shape == (40_000,) and sigma.min() > 0


def test_loss_weight_is_the_edm_lambda():
    # at sigma = sigma_data: (2 sd^2) / sd^4 = 2 / sd^2
    assert math.isclose(loss_weight(torch.tensor(0.5), sigma_data=0.5).item(), 8.0)
    s = torch.tensor([0.1, 3.0])
    torch.testing.assert_close(loss_weight(s, sigma_data=0.5), (s**2 + 0.25) / (s * 0.5) ** 2)


def test_regression_loss_is_the_mean_squared_error_of_the_prediction(batch):
    x, y, _ = batch
    predict = lambda inputs: inputs[:, :2] * 2.0
    expected = ((x[:, :2] * 2.0 - y) ** 2).mean()
    torch.testing.assert_close(regression_loss(predict, x, y), expected)


def test_reductions_relate_as_documented(batch):
    x, y, mean = batch
    sigma, noise = torch.tensor([0.3, 2.0]), torch.randn(2, 2, 10, 12)
    kw = {"edm": EDM, "mean": mean, "sigma": sigma, "noise": noise}
    none = residual_loss(identity_denoiser, x, y, reduction="none", **kw)
    assert none.shape == y.shape
    mean_loss = residual_loss(identity_denoiser, x, y, **kw)
    per_sample = residual_loss(identity_denoiser, x, y, reduction="sum_per_sample", **kw)
    torch.testing.assert_close(per_sample, none.sum() / 2)
    torch.testing.assert_close(per_sample, mean_loss * (2 * 10 * 12))
    with pytest.raises(ValueError, match="reduction"):
        regression_loss(lambda v: v[:, :2], x, y, reduction="sum")


def test_residual_loss_has_a_known_value_for_the_identity_and_the_perfect_denoiser(batch):
    x, y, mean = batch
    sigma, noise = torch.tensor([0.3, 2.0]), torch.randn(2, 2, 10, 12)
    # identity denoiser: D - r = sigma * noise
    loss = residual_loss(
        identity_denoiser, x, y, edm=EDM, mean=mean, sigma=sigma, noise=noise, reduction="none"
    )
    s = sigma.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(loss, loss_weight(s, sigma_data=EDM.sigma_data) * (s * noise) ** 2)
    # a denoiser that knows the residual has zero loss
    oracle = lambda xn, sg, *, condition, offsets: y - mean
    assert residual_loss(oracle, x, y, edm=EDM, mean=mean).item() == 0.0


def test_residual_denoiser_sees_the_noisy_residual_and_mean_then_inputs(batch):
    x, y, mean = batch
    seen = {}

    def spy(x_noisy, sigma, *, condition, offsets):
        seen.update(x_noisy=x_noisy, sigma=sigma, condition=condition, offsets=offsets)
        return x_noisy

    sigma, noise = torch.tensor([0.3, 2.0]), torch.randn(2, 2, 10, 12)
    residual_loss(spy, x, y, edm=EDM, mean=mean, sigma=sigma, noise=noise)
    torch.testing.assert_close(seen["x_noisy"], y - mean + sigma.reshape(-1, 1, 1, 1) * noise)
    assert torch.equal(seen["condition"], torch.cat([mean, x], dim=1))
    assert torch.equal(seen["sigma"], sigma) and seen["offsets"] is None
    residual_loss(spy, x, y, edm=EDMConfig(hr_mean_conditioning=False), mean=mean)
    assert torch.equal(seen["condition"], x)


def test_residual_loss_draws_sigma_then_noise_from_its_generator(batch):
    x, y, mean = batch
    drawn = residual_loss(
        identity_denoiser, x, y, edm=EDM, mean=mean, generator=torch.Generator().manual_seed(5)
    )
    g = torch.Generator().manual_seed(5)
    sigma = sample_sigma(2, P_mean=EDM.P_mean, P_std=EDM.P_std, generator=g)
    noise = torch.randn(2, 2, 10, 12, generator=g)
    explicit = residual_loss(identity_denoiser, x, y, edm=EDM, mean=mean, sigma=sigma, noise=noise)
    torch.testing.assert_close(drawn, explicit)


def test_residual_loss_takes_noise_levels_and_weight_from_its_edm_config(batch):
    x, y, mean = batch
    edm = EDMConfig(P_mean=-1.0, P_std=0.5, sigma_data=0.8)
    seen = {}

    def spy(x_noisy, sigma, *, condition, offsets):
        seen["sigma"] = sigma
        return x_noisy

    loss = residual_loss(
        spy, x, y, edm=edm, mean=mean, generator=torch.Generator().manual_seed(5), reduction="none"
    )
    g = torch.Generator().manual_seed(5)
    sigma = sample_sigma(2, P_mean=-1.0, P_std=0.5, generator=g)
    noise = torch.randn(2, 2, 10, 12, generator=g)
    torch.testing.assert_close(seen["sigma"], sigma)
    s = sigma.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(loss, (s**2 + 0.64) / (s * 0.8) ** 2 * (s * noise) ** 2)


def test_residual_loss_computes_the_mean_without_training_the_regression_net(batch):
    x, y, _ = batch
    regression = torch.nn.Conv2d(3, 2, 1)
    scale = torch.nn.Parameter(torch.tensor(0.5))
    denoiser = lambda xn, sg, *, condition, offsets: scale * xn
    loss = residual_loss(
        denoiser, x, y, edm=EDM, regression=regression, generator=torch.Generator().manual_seed(0)
    )
    loss.backward()
    assert scale.grad is not None and scale.grad != 0
    assert all(p.grad is None for p in regression.parameters())
    with torch.no_grad():
        expected = residual_loss(
            denoiser, x, y, edm=EDM, mean=regression(x), generator=torch.Generator().manual_seed(0)
        )
    torch.testing.assert_close(loss.detach(), expected)


def test_patched_residual_loss_slices_target_condition_and_offsets_together(batch):
    x, y, mean = batch
    origins = torch.tensor([[0, 0], [3, 5], [6, 8]])
    seen = {}

    def spy(x_noisy, sigma, *, condition, offsets):
        seen.update(x_noisy=x_noisy, condition=condition, offsets=offsets)
        return x_noisy

    sigma, noise = torch.rand(6) + 0.1, torch.randn(6, 2, 4, 4)
    loss = residual_loss(
        spy,
        x,
        y,
        edm=EDM,
        mean=mean,
        sigma=sigma,
        noise=noise,
        patch=(4, 4),
        origins=origins,
        global_context=True,
        reduction="none",
    )
    s = sigma.reshape(-1, 1, 1, 1)
    assert loss.shape == (6, 2, 4, 4)
    torch.testing.assert_close(loss, loss_weight(s, sigma_data=EDM.sigma_data) * (s * noise) ** 2)
    torch.testing.assert_close(seen["x_noisy"], take_patches(y - mean, origins, (4, 4)) + s * noise)
    cond = take_patches(torch.cat([mean, x], dim=1), origins, (4, 4))
    context = global_context(x, (4, 4)).repeat_interleave(3, dim=0)
    assert torch.equal(seen["condition"], torch.cat([cond, context], dim=1))
    assert torch.equal(seen["offsets"], origins.repeat(2, 1))
    # sample 1, patch 1 is y[1, :, 3:7, 5:9]
    torch.testing.assert_close(seen["x_noisy"][4] - s[4] * noise[4], (y - mean)[1, :, 3:7, 5:9])


def test_patched_residual_loss_draws_origins_then_sigma_then_noise(batch):
    from corrdiff_xr.patching import random_origins

    x, y, mean = batch
    drawn = residual_loss(
        identity_denoiser,
        x,
        y,
        edm=EDM,
        mean=mean,
        patch=(4, 6),
        num_patches=3,
        generator=torch.Generator().manual_seed(2),
        reduction="none",
    )
    g = torch.Generator().manual_seed(2)
    origins = random_origins((10, 12), (4, 6), 3, generator=g)
    sigma = sample_sigma(6, P_mean=EDM.P_mean, P_std=EDM.P_std, generator=g)
    noise = torch.randn(6, 2, 4, 6, generator=g)
    explicit = residual_loss(
        identity_denoiser,
        x,
        y,
        edm=EDM,
        mean=mean,
        patch=(4, 6),
        origins=origins,
        sigma=sigma,
        noise=noise,
        reduction="none",
    )
    torch.testing.assert_close(drawn, explicit)


def test_residual_condition_broadcasts_one_mean_over_the_batch():
    x, mean = torch.randn(3, 2, 4, 4), torch.randn(1, 1, 4, 4)
    cond = residual_condition(x, mean, hr_mean_conditioning=True)
    assert cond.shape == (3, 3, 4, 4) and torch.equal(cond[2, 0], mean[0, 0])


def test_bad_loss_inputs_raise_clear_errors(batch):
    x, y, mean = batch
    with pytest.raises(ValueError, match="exactly one of mean"):
        residual_loss(identity_denoiser, x, y, edm=EDM)
    with pytest.raises(ValueError, match="same N, H and W"):
        residual_loss(identity_denoiser, x[..., :5], y, edm=EDM, mean=mean)
    with pytest.raises(ValueError, match="one per row"):
        residual_loss(identity_denoiser, x, y, edm=EDM, mean=mean, sigma=torch.ones(3))
    with pytest.raises(ValueError, match="regression returned shape"):
        regression_loss(lambda v: v, x, y)


def test_residual_loss_adds_patch_origins_to_the_crop_offsets(batch):
    x, y, mean = batch
    seen = []

    def spy(x_noisy, sigma, *, condition, offsets):
        seen.append(offsets)
        return x_noisy

    crops = torch.tensor([[100, 7], [0, 50]])
    residual_loss(spy, x, y, edm=EDM, mean=mean, offsets=crops)
    assert torch.equal(seen[-1], crops)
    origins = torch.tensor([[0, 0], [3, 5]])
    residual_loss(spy, x, y, edm=EDM, mean=mean, offsets=crops, patch=(4, 4), origins=origins)
    assert seen[-1].tolist() == [[100, 7], [103, 12], [0, 50], [3, 55]]
