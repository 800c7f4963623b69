"""Neural networks of CorrDiff: the SongUNet backbone, its layers and embeddings."""

from __future__ import annotations

from corrdiff_xr.nn.embeddings import GridEmbedding, LeadTimeEmbedding, NoiseEmbedding
from corrdiff_xr.nn.layers import Attention, Conv2d, GroupNorm, Linear, UNetBlock
from corrdiff_xr.nn.unet import RegressionUNet, SongUNet

__all__ = [
    "Attention",
    "Conv2d",
    "GridEmbedding",
    "GroupNorm",
    "LeadTimeEmbedding",
    "Linear",
    "NoiseEmbedding",
    "RegressionUNet",
    "SongUNet",
    "UNetBlock",
]
