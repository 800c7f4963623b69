"""Neural networks of CorrDiff: the backbone table, the SongUNet backbone, its layers and
embeddings."""

from __future__ import annotations

from corrdiff_xr.nn.backbones import (
    BACKBONES,
    Backbone,
    build_network,
    network_dict,
    register_backbone,
)
from corrdiff_xr.nn.dit import DiT
from corrdiff_xr.nn.embeddings import GridEmbedding, LeadTimeEmbedding, NoiseEmbedding
from corrdiff_xr.nn.layers import Attention, Conv2d, GroupNorm, Linear, UNetBlock
from corrdiff_xr.nn.unet import RegressionUNet, SongUNet

__all__ = [
    "BACKBONES",
    "Attention",
    "Backbone",
    "Conv2d",
    "DiT",
    "GridEmbedding",
    "GroupNorm",
    "LeadTimeEmbedding",
    "Linear",
    "NoiseEmbedding",
    "RegressionUNet",
    "SongUNet",
    "UNetBlock",
    "build_network",
    "network_dict",
    "register_backbone",
]
