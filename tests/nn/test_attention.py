"""Attention: chunked fused attention against the explicit formula; the bound on its tokens."""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from corrdiff_xr.config import NetworkConfig, from_dict, load_yaml
from corrdiff_xr.nn import Attention, SongUNet
from corrdiff_xr.nn.attention import MAX_ATTENTION_TOKENS, self_attention
from corrdiff_xr.testing import TINY_NETWORK as TINY

CONFIGS = Path(__file__).resolve().parents[2] / "corrdiff_xr" / "configs"
NDFD = (688, 1072)  # the NDFD CONUS window whose 172 x 268 bottleneck prompted the bound
HRRR = (1056, 1792)


def _explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return w @ v


@pytest.mark.parametrize("chunk", [100, 777, 4096])
def test_chunked_attention_and_its_gradients_equal_the_explicit_softmax(chunk):
    # 777 tokens: chunks of 100 leave a ragged last chunk of 77
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(3, 2, 2, 777, 16, generator=g)
    ref = [t.clone().requires_grad_() for t in qkv]
    got = [t.clone().requires_grad_() for t in qkv]
    a, b = _explicit(*ref), self_attention(*got, chunk=chunk)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    seed = torch.randn(a.shape, generator=g)
    (a * seed).sum().backward()
    (b * seed).sum().backward()
    for r, o in zip(ref, got):
        torch.testing.assert_close(o.grad, r.grad, atol=1e-5, rtol=0)


def test_attention_of_strided_inputs_equals_that_of_contiguous_ones():
    x = torch.randn(3, 2, 1, 16, 300)  # ({q,k,v}, n, heads, d, tokens): d is not stride 1
    q, k, v = x.transpose(-1, -2).unbind(0)
    assert q.stride(-1) != 1
    torch.testing.assert_close(
        self_attention(q, k, v, chunk=128), _explicit(q, k, v), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_attention_block_runs_on_the_fused_kernel_that_keeps_no_score_matrix(memory_format):
    # the math backend (tokens x tokens scores) is excluded: torch raises if the fused kernel
    # cannot take the layout, as it could not before q, k, v were made stride 1
    att = Attention(32).train()
    x = torch.randn(2, 32, 12, 10).contiguous(memory_format=memory_format).requires_grad_()
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        y = att(x)
        y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and att.qkv.weight.grad.abs().sum() > 0


def test_attention_beyond_the_token_bound_is_left_out_with_a_warning_naming_the_fix(caplog):
    cfg = dataclasses.replace(TINY, attn_resolutions=(130,))  # level 1 of a 260-row grid
    with caplog.at_level(logging.WARNING, logger="corrdiff_xr.nn.attention"):
        net = SongUNet(cfg, in_channels=1, out_channels=1, img_shape=(260, 256))
    assert net.enc["L1_block0"].attn is None and net.dec["L1_in0"].attn is None
    assert net.dec["L1_block1"].attn is None
    msg = caplog.records[0].getMessage()
    for part in ("level 1", "130x128 = 16640 tokens", f"bound of {MAX_ATTENTION_TOKENS}"):
        assert part in msg
    assert "network.attn_resolutions" in msg and "network.channel_mult" in msg


def test_attention_at_the_token_bound_is_kept_with_unchanged_parameter_names():
    cfg = dataclasses.replace(TINY, attn_resolutions=(128,))  # 128 x 128 = the bound
    net = SongUNet(cfg, in_channels=1, out_channels=1, img_shape=(256, 256))
    small = SongUNet(cfg, in_channels=1, out_channels=1, img_shape=(256, 8))
    assert net.dec["L1_in0"].attn is not None and net.enc["L1_block0"].attn is not None
    # a grid within the bound builds the state dict it always did (checkpoints load)
    assert list(net.state_dict()) == list(small.state_dict())


def _attention_tokens(net: SongUNet, shape: tuple[int, int]) -> list[int]:
    tokens = []
    for name, module in net.named_modules():
        if isinstance(module, Attention):
            level = int(re.search(r"\.L(\d+)_", name).group(1))
            tokens.append(-(-shape[0] // 2**level) * -(-shape[1] // 2**level))
    return tokens


def _network(data: dict) -> NetworkConfig:
    # a shipped config's ``network:``, its ``preset`` resolved as the training CLI does
    rest = {k: v for k, v in data.items() if k != "preset"}
    return NetworkConfig.preset(data["preset"], **rest) if "preset" in data else from_dict(NetworkConfig, rest)  # fmt: skip


def _configs() -> dict[str, NetworkConfig]:
    nets = {p.stem: _network(load_yaml(p).get("network", {})) for p in sorted(CONFIGS.glob("*.yaml"))}  # fmt: skip
    return {**nets, "preset_mini": NetworkConfig.preset("mini"), "preset_normal": NetworkConfig.preset("normal")}  # fmt: skip


@pytest.mark.parametrize("name", sorted(_configs()))
def test_presets_place_no_attention_over_more_tokens_than_the_bound_on_real_grids(name):
    cfg = _configs()[name]
    for shape in (NDFD, HRRR):
        with torch.device("meta"):  # layers only; no weights are drawn
            net = SongUNet(cfg, in_channels=4, out_channels=2, img_shape=shape)
        assert max(_attention_tokens(net, shape), default=0) <= MAX_ATTENTION_TOKENS


def test_reference_sized_networks_keep_their_bottleneck_attention():
    # CorrDiff on HRRR (normal, 5 levels): 66 x 112 = 7392 tokens at the bottleneck
    with torch.device("meta"):
        net = SongUNet(
            NetworkConfig.preset("normal"), in_channels=4, out_channels=2, img_shape=HRRR
        )
    assert net.dec["L4_in0"].attn is not None
