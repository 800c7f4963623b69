"""Activation checkpointing (``network.checkpoint_activations``): the same loss and gradients
as the plain path, engaged only when training with gradients, and no part of the weights."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from corrdiff_xr.config import NetworkConfig
from corrdiff_xr.model import CorrDiff
from corrdiff_xr.nn import SongUNet
from corrdiff_xr.nn.layers import UNetBlock

# 9 x 13 does not divide by 2 (two levels): the padding path; attention at both levels
# (global heights 9 and 4) and at the bottleneck; dropout draws random masks
CFG = NetworkConfig(
    model_channels=8,
    channel_mult=(1, 2),
    num_blocks=1,
    attn_resolutions=(9, 4),
    dropout=0.2,
    channels_last=False,
)
SHAPE = (9, 13)


def _net(checkpointed: bool, **overrides) -> SongUNet:
    cfg = dataclasses.replace(CFG, checkpoint_activations=checkpointed, **overrides)
    net = SongUNet(cfg, in_channels=3, out_channels=2, img_shape=SHAPE)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in sorted(net.named_parameters()):
            fan_in = p[0].numel() if p.ndim > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 / math.sqrt(fan_in))
    return net


def _count_block_calls(net: SongUNet) -> list[int]:
    calls = [0]

    def hook(*_):
        calls[0] += 1

    for module in net.modules():
        if isinstance(module, UNetBlock):
            module.register_forward_pre_hook(hook)  # recomputation stops early
    return calls


def _loss_and_grads(net: SongUNet, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    torch.manual_seed(1)  # the same dropout masks in both runs
    loss = net(x, torch.rand(2, generator=torch.Generator().manual_seed(2))).square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in net.named_parameters()}


@pytest.mark.parametrize("channels_last", [False, True])
def test_checkpointed_blocks_give_the_plain_loss_and_gradients(channels_last):
    plain, ckpt = _net(False, channels_last=channels_last), _net(True, channels_last=channels_last)
    assert all(b.attn is not None for n, b in plain.enc.items() if "block" in n)
    assert plain.dec["L1_in0"].attn is not None
    x = torch.randn(2, 3, *SHAPE)
    calls = _count_block_calls(ckpt)
    loss_a, grads_a = _loss_and_grads(plain.train(), x)
    loss_b, grads_b = _loss_and_grads(ckpt.train(), x)
    blocks = sum(isinstance(m, UNetBlock) for m in ckpt.modules())
    assert calls[0] == 2 * blocks  # every block ran again in the backward pass
    torch.testing.assert_close(loss_b, loss_a, atol=1e-6, rtol=0)
    assert grads_a.keys() == grads_b.keys()
    for name, grad in grads_a.items():
        assert grad is not None and grads_b[name] is not None, name
        torch.testing.assert_close(grads_b[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_checkpointing_stays_off_in_eval_and_without_gradients():
    plain, ckpt = _net(False), _net(True)
    calls = _count_block_calls(ckpt)
    blocks = sum(isinstance(m, UNetBlock) for m in ckpt.modules())
    x = torch.randn(2, 3, *SHAPE)
    ckpt.eval()
    out = ckpt(x, torch.ones(2))  # grad enabled, but evaluation mode: nothing recomputed
    out.square().sum().backward()
    assert calls[0] == 2 * blocks - blocks  # one forward each, none in the backward pass
    with torch.no_grad():
        torch.testing.assert_close(ckpt(x, torch.ones(2)), plain.eval()(x, torch.ones(2)))
        torch.manual_seed(3)
        a = ckpt.train()(x, torch.ones(2))
        torch.manual_seed(3)
        b = plain.train()(x, torch.ones(2))
    torch.testing.assert_close(a, b)


def test_a_model_saved_with_checkpointing_loads_and_runs_without_it(tmp_path):
    reg = dataclasses.replace(CFG, checkpoint_activations=True, embedding_type="zero")
    model = CorrDiff(
        img_shape=SHAPE, regression_network=reg, residual_network=None, in_channels=3,
        out_channels=2,
    )  # fmt: skip
    path = model.save(tmp_path / "model.safetensors")
    loaded = CorrDiff.load(path).eval()
    assert loaded.regression_config.checkpoint_activations  # recorded, runs plainly in eval
    plain = CorrDiff(
        img_shape=SHAPE, in_channels=3, out_channels=2, residual_network=None,
        regression_network=dataclasses.replace(reg, checkpoint_activations=False),
    ).eval()  # fmt: skip
    plain.load_state_dict(loaded.state_dict())  # strict: the same weights either way
    cond = torch.randn(1, 3, *SHAPE)
    with torch.no_grad():
        expected = model.eval().regression(cond)
        torch.testing.assert_close(loaded.regression(cond), expected)
        torch.testing.assert_close(plain.regression(cond), expected)
