"""Noise keyed by what a sample *is*, never by how it was scheduled.

Every sampled patch gets its own :class:`torch.Generator`, seeded from the tuple
``(seed, time, member, patch row, patch column)`` through :class:`numpy.random.SeedSequence`
(a stable hash: unlike Python's ``hash()`` it does not change between processes). The time is
keyed by its int64 nanoseconds since 1970, so the same valid time gives the same noise in any
selection, chunking or worker of a run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["patch_generator", "patch_seed", "time_key"]

_MASK64 = (1 << 64) - 1


def time_key(time: np.datetime64 | int) -> int:
    """The time as int64 nanoseconds since 1970, folded to a non-negative 64-bit integer."""
    if isinstance(time, (np.datetime64,)) or hasattr(time, "dtype"):
        ns = int(np.asarray(time).astype("datetime64[ns]").astype(np.int64))
    else:
        ns = int(time)
    return ns & _MASK64


def patch_seed(seed: int, time: np.datetime64 | int, member: int, origin: tuple[int, int]) -> int:
    """A 63-bit seed for one patch of one member at one time.

    Parameters
    ----------
    seed
        The run's base seed (a non-negative integer).
    time
        Valid time (``datetime64``) or its int64 nanoseconds.
    member
        Ensemble member index.
    origin
        ``(row, col)`` of the patch's top-left pixel on the global fine grid (may be negative
        when patches reach past the domain edge).

    Returns
    -------
    int
        Deterministic in its arguments only; suitable for ``torch.Generator.manual_seed``.
    """
    if seed < 0 or member < 0:
        raise ValueError(f"seed and member must be non-negative, got seed={seed}, member={member}")
    row, col = (int(v) & _MASK64 for v in origin)
    entropy = [int(seed), time_key(time), int(member), row, col]
    words = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31 | int(words[1]) >> 1) & ((1 << 63) - 1)


def patch_generator(
    seed: int,
    time: np.datetime64 | int,
    member: int,
    origin: tuple[int, int],
    *,
    device: torch.device | str = "cpu",
) -> torch.Generator:
    """A :class:`torch.Generator` on ``device`` seeded with :func:`patch_seed`."""
    import torch

    return torch.Generator(device=device).manual_seed(patch_seed(seed, time, member, origin))
