"""Helpers for tests and notebooks: laziness checks and small fixtures.

``raise_if_dask_computes`` follows cf-xarray's idea: install a scheduler that counts (and
optionally refuses) computations, so a test can prove an operation stayed lazy.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import dask

from corrdiff_xr.config import NetworkConfig, to_dict

if TYPE_CHECKING:
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.model import CorrDiff

#: The one tiny network of the tests and benchmarks: a two-level SongUNet with attention at
#: 8 px and no dropout, so every layer kind runs, in milliseconds per call on 16 x 16 inputs.
#: Build variants with ``dataclasses.replace`` (``embedding_type="zero"`` for a regression
#: net); :func:`tiny_corrdiff` builds a whole model from it, :func:`tiny_network_dict` the
#: ``network:`` mapping of a training config.
TINY_NETWORK = NetworkConfig(
    model_channels=16,
    channel_mult=(1, 2),
    num_blocks=1,
    attn_resolutions=(8,),
    dropout=0.0,
)


def tiny_network_dict(**overrides: Any) -> dict[str, Any]:
    """:data:`TINY_NETWORK` as plain data (a training config's ``network:``), with overrides."""
    return to_dict(dataclasses.replace(TINY_NETWORK, **overrides))


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
    codec: Codec | None,
    img_shape: tuple[int, int],
    *,
    channels: int | None = None,
    residual: bool = True,
    seed: int = 0,
    **network: Any,
) -> CorrDiff:
    """A tiny untrained :class:`~corrdiff_xr.model.CorrDiff` built of :data:`TINY_NETWORK`.

    Weights come from ``torch.manual_seed(seed)`` (the global RNG is restored afterwards).
    ``channels`` replaces the networks' ``model_channels`` (a bigger or smaller model of the
    same architecture), other keywords replace other :class:`NetworkConfig` fields of both
    networks; ``residual=False`` builds a regression-only model.
    """
    import torch

    from corrdiff_xr.model import CorrDiff

    if channels is not None:
        network["model_channels"] = channels
    net = dataclasses.replace(TINY_NETWORK, **network)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CorrDiff(
            codec,
            img_shape=img_shape,
            regression_network=dataclasses.replace(net, embedding_type="zero"),
            residual_network=net if residual else None,
        )
    return model.eval()
