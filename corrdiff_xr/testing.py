"""Helpers for tests and notebooks: laziness checks and small fixtures.

``raise_if_dask_computes`` follows cf-xarray's idea: install a scheduler that counts (and
optionally refuses) computations, so a test can prove an operation stayed lazy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import dask

from corrdiff_xr.config import NetworkConfig

#: A two-level SongUNet with attention at 8 px and no dropout: every layer kind, milliseconds
#: per call on 16 x 16 inputs (the networks of the layer, model, checkpoint and parity tests).
TINY_NETWORK = NetworkConfig(
    model_channels=16,
    channel_mult=(1, 2),
    num_blocks=1,
    attn_resolutions=(8,),
    dropout=0.0,
)


class CountingScheduler:
    """A dask scheduler that counts calls and raises once more than ``max_computes`` happen."""

    def __init__(self, max_computes: int = 0):
        self.max_computes = max_computes
        self.total_computes = 0

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        self.total_computes += 1
        if self.total_computes > self.max_computes:
            raise RuntimeError(
                f"Too many dask computations were scheduled: {self.total_computes} "
                f"(allowed {self.max_computes})"
            )
        return dask.get(dsk, keys, **kwargs)


@contextlib.contextmanager
def raise_if_dask_computes(max_computes: int = 0) -> Iterator[CountingScheduler]:
    """Context in which more than ``max_computes`` dask computations raise RuntimeError."""
    scheduler = CountingScheduler(max_computes)
    with dask.config.set(scheduler=scheduler):
        yield scheduler


def tiny_corrdiff(
    codec: Any,
    img_shape: tuple[int, int],
    *,
    channels: int = 8,
    residual: bool = True,
    seed: int = 0,
) -> Any:
    """A tiny untrained :class:`~corrdiff_xr.model.CorrDiff` for tests and benchmarks.

    Weights come from ``torch.manual_seed(seed)`` (the global RNG is restored afterwards);
    networks have one level of ``channels`` channels, no attention and no dropout, so a
    forward pass on a 16 x 16 patch takes milliseconds.
    """
    import torch

    from corrdiff_xr.model import CorrDiff

    net = dict(model_channels=channels, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(),
               dropout=0.0, bottleneck_attention=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CorrDiff(
            codec,
            img_shape=img_shape,
            regression_network=NetworkConfig(embedding_type="zero", **net),
            residual_network=NetworkConfig(**net) if residual else None,
        )
    return model.eval()
