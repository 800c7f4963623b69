"""Building blocks of the SongUNet: convolutions with resampling, group norm, U-Net blocks.

The layers hold their parameters under the same names as PhysicsNeMo's (``weight``, ``bias``,
``norm0``, ``conv0``, ``affine``, ``norm1``, ``conv1``, ``skip``, ``attn.{norm,qkv,proj}``), so
a reference state dict maps onto ours by renaming the level prefixes only
(:mod:`corrdiff_xr.model`).

Speed choices, each numerically equivalent to the reference formula:

* the default ``[1, 1]`` resampling filter is a 2x2 box, so down-sampling is ``avg_pool2d``
  and up-sampling is nearest-neighbour ``interpolate`` instead of depthwise (transposed)
  convolutions with a filter tensor; other filters fall back to the depthwise form;
* group norm + SiLU use torch's fused ``group_norm`` kernel (which also handles
  ``channels_last``) in training and in evaluation;
* attention uses ``scaled_dot_product_attention`` with no fp32 round trips, on inputs laid
  out so that its fused kernels run: memory linear in the tokens (:mod:`.attention`);
* in-place adds where the operand is a fresh temporary;
* dropout on the CPU draws its keep mask as 32-bit integers, two per 64-bit draw of torch's
  generator: about 2x faster forward + backward than ``F.dropout`` (whose ``bernoulli_`` was the
  largest cost of a CPU training step after the convolutions), same keep probability to
  2^-32.

PhysicsNeMo's evaluation-mode GroupNorm normalises with the *unbiased* variance (its training
mode uses the biased one). ``GroupNorm(eval_unbiased=True)`` reproduces that exactly by
rescaling ``eps`` and the affine weight of the fused kernel, so trained reference checkpoints
give the reference's outputs in ``eval()``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from corrdiff_xr.nn.attention import self_attention

__all__ = ["Attention", "Conv2d", "GroupNorm", "Linear", "UNetBlock", "dropout", "xavier_uniform_"]


def xavier_uniform_(
    tensor: torch.Tensor, fan_in: int, fan_out: int, gain: float = 1.0
) -> torch.Tensor:
    """Fill ``tensor`` from U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out)) (Glorot 2010)."""
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        return tensor.uniform_(-bound, bound)


def _resample_kernel(taps: Sequence[int]) -> torch.Tensor:
    """Separable 2-D resampling kernel (k, k) normalised to unit sum."""
    f = torch.as_tensor(list(taps), dtype=torch.float32)
    return torch.outer(f, f) / f.sum().square()


class _CPUDropout(torch.autograd.Function):
    """Inverted dropout with the keep mask drawn as 32-bit integers (see the module notes)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        n = x.numel()
        bits = torch.empty((n + 1) // 2, dtype=torch.int64).random_(-(2**63), None)
        # uniform int32 laid out like x (dense), kept where >= the p-quantile of int32
        r = bits.view(torch.int32)[:n].as_strided(x.shape, x.stride())
        keep = r >= round(p * 2**32) - 2**31
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return x.mul(keep).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout: zero each element with probability ``p``, scale the rest by 1/(1-p).

    Same contract as ``F.dropout``; dense CPU tensors in eager mode take the faster mask of
    :class:`_CPUDropout`, anything else (CUDA, ``torch.compile``) ``F.dropout``.
    """
    if not training or p == 0.0:
        return x
    dense = x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
    # torch.compile generates its own fused dropout; the integer mask is for eager CPU runs
    if x.device.type != "cpu" or not 0.0 < p < 1.0 or not dense or torch.compiler.is_compiling():
        return F.dropout(x, p, training)
    return _CPUDropout.apply(x, p)


class Linear(nn.Module):
    """Dense layer ``x @ W.T + b`` with Glorot-uniform weights scaled by ``init_weight``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        init_weight: float = 1.0,
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        xavier_uniform_(self.weight, in_features, out_features, init_weight)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class Conv2d(nn.Module):
    """Square convolution with optional 2x up- or down-sampling before it.

    ``kernel=0`` means resampling only (no weights). Resampling with the 2x2 box filter
    ``[1, 1]`` uses pooling / nearest interpolation, which equal the reference's depthwise
    (transposed) convolution with that filter.
    """

    weight: nn.Parameter | None
    bias: nn.Parameter | None
    resample_filter: torch.Tensor | None  # a buffer, registered when up or down

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        *,
        bias: bool = True,
        up: bool = False,
        down: bool = False,
        resample_filter: Sequence[int] = (1, 1),
        init_weight: float = 1.0,
    ):
        super().__init__()
        if up and down:
            raise ValueError("Conv2d: up and down cannot both be set")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.resample_taps = tuple(int(t) for t in resample_filter)
        self._box = self.resample_taps == (1, 1)
        if kernel:
            fan_in, fan_out = (
                in_channels * kernel * kernel,
                out_channels * kernel * kernel,
            )
            self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel))
            xavier_uniform_(self.weight, fan_in, fan_out, init_weight)
            self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        else:
            self.weight = None
            self.bias = None
        # A derived constant, not state: kept out of the state dict.
        self.register_buffer(
            "resample_filter",
            _resample_kernel(self.resample_taps) if (up or down) else None,
            persistent=False,
        )

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        taps = self.resample_filter
        if self.down:
            if self._box:
                return F.avg_pool2d(x, 2)
            assert taps is not None  # registered whenever up or down is set
            f = taps.to(x.dtype)
            c = x.shape[1]
            pad = (f.shape[-1] - 1) // 2
            return F.conv2d(x, f.expand(c, 1, -1, -1), groups=c, stride=2, padding=pad)
        if self.up:
            if self._box:
                return F.interpolate(x, scale_factor=2.0, mode="nearest")
            assert taps is not None
            f = taps.to(x.dtype) * 4
            c = x.shape[1]
            pad = (f.shape[-1] - 1) // 2
            return F.conv_transpose2d(x, f.expand(c, 1, -1, -1), groups=c, stride=2, padding=pad)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._resample(x)
        if self.weight is not None:
            x = F.conv2d(x, self.weight, self.bias, padding=self.weight.shape[-1] // 2)
        return x


class GroupNorm(nn.Module):
    """Group normalisation (32 groups, at least 4 channels each) with an optional fused SiLU.

    Parameters
    ----------
    num_channels : int
        Channels normalised.
    eps : float
        Added to the variance.
    silu : bool
        Apply SiLU after the affine transform.
    eval_unbiased : bool
        In ``eval()`` normalise by the unbiased (n - 1) group variance, as PhysicsNeMo does.
    """

    def __init__(
        self,
        num_channels: int,
        *,
        eps: float = 1e-6,
        silu: bool = False,
        eval_unbiased: bool = True,
    ):
        super().__init__()
        groups = min(32, (num_channels + 3) // 4)
        if num_channels % groups:
            raise ValueError(
                f"GroupNorm: {num_channels} channels are not divisible into {groups} groups"
            )
        self.num_groups = groups
        self.eps = eps
        self.silu = silu
        self.eval_unbiased = eval_unbiased
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight: torch.Tensor = self.weight
        eps = self.eps
        if self.eval_unbiased and not self.training:
            # (x - m) / sqrt(v*n/(n-1) + eps) = r * (x - m) / sqrt(v + eps*r^2), r^2 = (n-1)/n
            n = (x.shape[1] // self.num_groups) * x.shape[2] * x.shape[3]
            r2 = (n - 1) / n
            weight, eps = weight * math.sqrt(r2), eps * r2
        x = F.group_norm(x, self.num_groups, weight, self.bias, eps)
        return F.silu(x) if self.silu else x


class Attention(nn.Module):
    """Single-scale self-attention over all pixels with a residual connection.

    The ``qkv`` 1x1 convolution's output channels are laid out (head, channel, {q,k,v}) as in
    the reference, so its weights load unchanged.
    """

    def __init__(
        self,
        channels: int,
        *,
        num_heads: int = 1,
        eps: float = 1e-6,
        eval_unbiased: bool = True,
    ):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"Attention: {channels} channels not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.norm = GroupNorm(channels, eps=eps, eval_unbiased=eval_unbiased)
        self.qkv = Conv2d(channels, channels * 3, 1, init_weight=math.sqrt(0.2))
        self.proj = Conv2d(channels, channels, 1, init_weight=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(n, self.num_heads, c // self.num_heads, 3, h * w)
        # one copy to (3, n, heads, hw, c/heads), channels last: the fused kernels need it
        q, k, v = qkv.permute(3, 0, 1, 4, 2).contiguous().unbind(0)
        a = self_attention(q, k, v)  # scale 1/sqrt(c/heads)
        a = a.transpose(-1, -2).reshape(n, c, h, w)
        return self.proj(a).add_(x)


class UNetBlock(nn.Module):
    """DDPM++ residual block: GN-SiLU-conv, add noise embedding, GN-SiLU-dropout-conv, skip.

    Optionally resamples (``up``/``down``) and ends with self-attention. Outputs are scaled by
    ``1/sqrt(2)`` after the residual sum and after attention, as in the reference.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        *,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        dropout: float = 0.0,
        resample_filter: Sequence[int] = (1, 1),
        eval_unbiased: bool = True,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.dropout = dropout
        self.skip_scale = 1.0 / math.sqrt(2.0)
        eps = 1e-6
        self.norm0 = GroupNorm(in_channels, silu=True, eps=eps, eval_unbiased=eval_unbiased)
        self.conv0 = Conv2d(
            in_channels,
            out_channels,
            3,
            up=up,
            down=down,
            resample_filter=resample_filter,
        )
        self.affine = Linear(emb_channels, out_channels)
        self.norm1 = GroupNorm(out_channels, silu=True, eps=eps, eval_unbiased=eval_unbiased)
        self.conv1 = Conv2d(out_channels, out_channels, 3, init_weight=1e-5)
        self.skip = None
        if out_channels != in_channels or up or down:
            self.skip = Conv2d(
                in_channels,
                out_channels,
                1,
                up=up,
                down=down,
                resample_filter=resample_filter,
            )
        self.attn = (
            Attention(out_channels, eps=eps, eval_unbiased=eval_unbiased) if attention else None
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        orig = x
        x = self.conv0(self.norm0(x))
        x = self.norm1(x.add_(self.affine(emb)[:, :, None, None]))
        x = self.conv1(dropout(x, self.dropout, self.training))
        x = x.add_(self.skip(orig) if self.skip is not None else orig).mul_(self.skip_scale)
        if self.attn is not None:
            x = self.attn(x).mul_(self.skip_scale)
        return x
