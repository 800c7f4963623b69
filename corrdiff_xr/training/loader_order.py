"""The order of training samples: the blocks' shuffle, rank shares, patch origins.

The blocks themselves are chunk-aligned xbatcher windows
(:mod:`~corrdiff_xr.training.xbatcher_blocks`); xbatcher has no order, sharding or resume, so
they are added here. Everything is a pure function of ``(seed, epoch, ...)``, so the stream
of a :class:`~corrdiff_xr.training.loader.ChunkShuffleLoader` never depends on workers or
batching:

1. the blocks of the (time-selected) pair are permuted with ``default_rng([seed, epoch])``;
2. rank ``r`` of ``world_size`` takes blocks ``r, r + world_size, ...`` of that permutation,
   so each rank reads only its share of the store;
3. samples within a block are permuted with ``default_rng([seed, epoch, block_start])``;
4. each sample's patch origin is drawn from a generator keyed by ``(seed, epoch, time index)``.
"""

from __future__ import annotations

import numpy as np
import torch

from corrdiff_xr.noise import TRAIN_PATCH, keyed_generator

__all__ = ["patch_origins", "rank_blocks", "within_block_order"]


def rank_blocks(
    n_blocks: int,
    *,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = True,
) -> np.ndarray:
    """Indices of the blocks rank ``rank`` reads in ``epoch``, in reading order."""
    order = (
        np.random.default_rng([seed, epoch]).permutation(n_blocks)
        if shuffle
        else np.arange(n_blocks)
    )
    return order[rank::world_size]


def within_block_order(n: int, *, seed: int, epoch: int, start: int, shuffle: bool) -> np.ndarray:
    """Positions of a block's ``n`` samples in reading order."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch, start]).permutation(n)


def _patch_generator(seed: int, epoch: int, time_index: int) -> torch.Generator:
    # Patch origins keyed by (seed, epoch, sample), so they never depend on batching/workers.
    return keyed_generator(TRAIN_PATCH, seed, epoch, time_index)


def patch_origins(
    image_shape: tuple[int, int],
    patch_shape: tuple[int, int],
    times: np.ndarray,
    *,
    seed: int,
    epoch: int,
) -> np.ndarray:
    """``(N, 2)`` int64 top-left ``(row, col)`` of each sample's training patch."""
    from corrdiff_xr.patching import random_origins

    return np.stack(
        [
            np.asarray(
                random_origins(
                    image_shape, patch_shape, 1, generator=_patch_generator(seed, epoch, int(t))
                )
            )[0]
            for t in times
        ]
    ).astype(np.int64)
