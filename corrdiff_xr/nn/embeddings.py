"""Embeddings: the diffusion noise level, the pixel position on the global grid, lead time.

Grid embeddings are defined on the *global* domain of shape ``img_shape``; a network that sees
a patch is told the patch's top-left pixel on that grid (``offsets``, one (row, col) per
sample) and receives the slice of the embedding at that place, so patched and whole-domain
runs see the same positional information. Pixels of a patch that fall outside ``img_shape``
(the padded edge patches of an overlapping tiling) get the position of the pixel whose data
the padding mirrored there (:func:`corrdiff_xr.patching.patch_positions`), as the reference's
``global_index`` does, so every grid type, learnable ones included, accepts any offset.

The sinusoidal formulas follow PhysicsNeMo's ``SongUNetPosEmbd`` (angle 2*pi*i/(n-1) along an
axis of n pixels; channels ordered frequency-major as sin(x), sin(y), cos(x), cos(y)), so
weights trained there see the same inputs here.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from corrdiff_xr.patching import patch_positions

__all__ = ["GridEmbedding", "LeadTimeEmbedding", "NoiseEmbedding"]

GridType = Literal["sinusoidal", "sinusoidal_octave", "learnable", "linear", "none"]


class NoiseEmbedding(nn.Module):
    """Transformer-style sinusoidal embedding of the scalar noise label (DDPM++).

    Returns ``[sin(t f_k), cos(t f_k)]`` with f_k = (1/max_positions)^(k/(C/2-1)).
    """

    freqs: torch.Tensor  # a buffer

    def __init__(self, num_channels: int, *, max_positions: int = 10000):
        super().__init__()
        half = num_channels // 2
        freqs = (1.0 / max_positions) ** (torch.arange(half, dtype=torch.float32) / (half - 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = torch.outer(t.to(self.freqs.dtype), self.freqs)
        return torch.cat([x.sin(), x.cos()], dim=1)


class GridEmbedding(nn.Module):
    """Positional channels (C, H, W) on the global grid, sliceable at per-sample offsets.

    Parameters
    ----------
    img_shape : tuple of int
        Global grid (H, W).
    gridtype : {"sinusoidal", "sinusoidal_octave", "learnable", "linear", "none"}
        Kind of embedding; ``"none"`` (or ``channels=0``) adds no channels.
    channels : int
        Number of channels (multiple of 4 for sinusoids, 2 for ``linear``).
    """

    weight: nn.Parameter | None  # the table of ``"learnable"``

    def __init__(
        self,
        img_shape: tuple[int, int],
        *,
        gridtype: GridType = "sinusoidal",
        channels: int = 4,
    ):
        super().__init__()
        self.img_shape = (int(img_shape[0]), int(img_shape[1]))
        self.gridtype = gridtype if channels else "none"
        self.channels = channels if self.gridtype != "none" else 0
        self.weight = None
        if self.gridtype in ("sinusoidal", "sinusoidal_octave") and channels % 4:
            raise ValueError(
                f"gridtype {gridtype!r} needs N_grid_channels divisible by 4, got {channels}"
            )
        if self.gridtype == "linear" and channels != 2:
            raise ValueError(f"gridtype 'linear' needs N_grid_channels = 2, got {channels}")
        if self.gridtype == "learnable":
            self.weight = nn.Parameter(torch.randn(channels, *self.img_shape))
        elif self.gridtype not in ("sinusoidal", "sinusoidal_octave", "linear", "none"):
            raise ValueError(f"unknown gridtype {gridtype!r}")

    def _frequencies(self) -> list[float]:
        nf = self.channels // 4
        if self.gridtype == "sinusoidal":  # legacy bands 2**linspace(0, nf, nf)
            return [2.0 ** (nf * k / (nf - 1)) if nf > 1 else 1.0 for k in range(nf)]
        return [2.0**k for k in range(nf)]

    def _axis(self, idx: torch.Tensor, n: int) -> torch.Tensor:
        # 1-D tables are tiny; fp64 keeps the angles exact at high frequencies (as the reference).
        if self.gridtype == "linear":
            return -1.0 + idx.double() * (2.0 / (n - 1))
        return idx.double() * (2.0 * math.pi / (n - 1))

    def forward(
        self,
        offsets: torch.Tensor | None,
        shape: tuple[int, int],
        batch: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | None = None,
    ) -> torch.Tensor | None:
        """Embedding (batch, C, h, w) of the patches at ``offsets`` (batch, 2), or the full grid."""
        if self.channels == 0:
            return None
        h, w = shape
        if offsets is None:
            if (h, w) != self.img_shape:
                raise ValueError(
                    f"input of shape {(h, w)} differs from the grid {self.img_shape}; pass offsets "
                    "(the global top-left pixel of each patch) to place it"
                )
            offsets = torch.zeros(batch, 2, dtype=torch.long, device=device)
        rows, cols = patch_positions(offsets, (h, w), self.img_shape)  # (N, h), (N, w)
        if self.weight is not None:  # learnable
            # (C, N, h, w) -> (N, C, h, w)
            sel = self.weight[:, rows[:, :, None], cols[:, None, :]].permute(1, 0, 2, 3)
            return sel.to(dtype)
        ay = self._axis(rows, self.img_shape[0])  # (N, h)
        ax = self._axis(cols, self.img_shape[1])  # (N, w)
        n = rows.shape[0]
        if self.gridtype == "linear":
            chans = [ay[:, :, None].expand(n, h, w), ax[:, None, :].expand(n, h, w)]
        else:
            chans = []
            for f in self._frequencies():
                for fn in (torch.sin, torch.cos):
                    chans.append(fn(ax * f)[:, None, :].expand(n, h, w))
                    chans.append(fn(ay * f)[:, :, None].expand(n, h, w))
        return torch.stack(chans, dim=1).to(dtype)


class LeadTimeEmbedding(nn.Module):
    """Learnable per-lead-time channels (steps, C, H, W), selected by label and patch offset."""

    def __init__(self, img_shape: tuple[int, int], *, steps: int, channels: int):
        super().__init__()
        self.img_shape = (int(img_shape[0]), int(img_shape[1]))
        self.steps = steps
        self.channels = channels
        self.weight = nn.Parameter(torch.randn(steps, channels, *self.img_shape))

    def forward(
        self,
        lead_time: torch.Tensor,
        offsets: torch.Tensor | None,
        shape: tuple[int, int],
        *,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Embedding (N, C, h, w) for integer lead-time labels (N,) at ``offsets`` (N, 2)."""
        lead_time = lead_time.long().reshape(-1)
        if lead_time.min() < 0 or lead_time.max() >= self.steps:
            raise ValueError(
                f"lead_time labels must lie in [0, {self.steps}), got {lead_time.tolist()}"
            )
        sel = self.weight[lead_time]  # (N, C, H, W)
        h, w = shape
        if offsets is None:
            if (h, w) != self.img_shape:
                raise ValueError(
                    f"input of shape {(h, w)} differs from the grid {self.img_shape}; pass offsets"
                )
            return sel.to(dtype)
        rows, cols = patch_positions(offsets, (h, w), self.img_shape)
        n = torch.arange(sel.shape[0], device=sel.device)[:, None, None]
        # advanced indices (N,1,1),(N,h,1),(N,1,w) around a slice -> (N, h, w, C)
        out = sel.permute(0, 2, 3, 1)[n, rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2).to(dtype)
